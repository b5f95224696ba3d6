//! Protocol adapters: each turns its wire format into oxserve-core calls and back.

pub mod grpc;
pub mod memory_budget;
pub mod metrics;
pub mod rest;
pub mod warmup;
