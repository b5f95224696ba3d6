//! Protocol adapters: each turns its wire format into oxserve-core calls and back.

pub mod grpc;
pub mod memory_budget;
pub mod metrics;
pub mod rest;
pub mod warmup;

/// TF Serving's default `--grpc_max_threads` and `--rest_api_num_threads`: 4 per schedulable CPU.
pub fn default_handler_threads() -> usize {
    4 * std::thread::available_parallelism().map_or(1, |n| n.get())
}
