//! End-to-end tests: the whole pipeline with a real nats-server and PostgreSQL, the sandbox
//! standing in for Telegram. One binary for all modules (faster to link).

mod actions;
mod admin;
mod arrival;
mod broadcast;
mod conversation;
mod delivery;
mod flood;
mod group;
mod ingress;
mod input;
mod lease_ttl;
mod load;
mod metrics;
mod migrate;
mod order;
mod outages;
mod quiz;
mod quiz_store;
mod retention;
mod scaling;
mod secrets;
mod sender;
mod shutdown;
mod stream_epoch;
mod traces;
