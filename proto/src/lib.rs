//! Protobuf wire types shared by every Courier service, and the admin API.
//!
//! The code is generated from `proto/courier/**/*.proto` by `prost-build` and
//! `tonic-prost-build` at build time (with `protox`, so no system `protoc` is needed) and never
//! committed.

/// `courier.v1`: the envelopes carried by JetStream.
pub mod v1 {
    #![allow(missing_docs, clippy::all)]
    include!(concat!(env!("OUT_DIR"), "/courier.v1.rs"));
}

/// `courier.admin.v1`: the admin API served by `courier-admin` (server and client).
pub mod admin {
    /// Version 1 of the admin API.
    pub mod v1 {
        #![allow(missing_docs, clippy::all)]
        include!(concat!(env!("OUT_DIR"), "/courier.admin.v1.rs"));

        /// The encoded `FileDescriptorSet` of `courier/admin/v1/admin.proto`, for the server's
        /// reflection service.
        pub const FILE_DESCRIPTOR_SET: &[u8] =
            include_bytes!(concat!(env!("OUT_DIR"), "/courier_admin_v1_descriptor.bin"));
    }
}

pub use prost::Message;
