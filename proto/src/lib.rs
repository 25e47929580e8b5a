//! Protobuf wire types shared by every Courier service.
//!
//! The code is generated from `proto/courier/v1/*.proto` by `prost-build` at build time (with
//! `protox`, so no system `protoc` is needed) and never committed.

/// `courier.v1`: the envelopes carried by JetStream.
pub mod v1 {
    #![allow(missing_docs, clippy::all)]
    include!(concat!(env!("OUT_DIR"), "/courier.v1.rs"));
}

pub use prost::Message;
