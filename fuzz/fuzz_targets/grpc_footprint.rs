//! `decoded_bound` must cover the heap prost really takes to decode any bytes, as the gRPC
//! server's memory budget charges the bound before prost decodes. The first byte picks the
//! message type: the requests the server decodes, and the warm-up file's records.

#![no_main]

use libfuzzer_sys::fuzz_target;
use oxserve_proto::footprint::decoded_bound;
use oxserve_proto::tensorflow::serving::{
    ClassificationRequest, GetModelMetadataRequest, GetModelStatusRequest, MultiInferenceRequest,
    PredictRequest, PredictionLog, RegressionRequest, ReloadConfigRequest,
};
use prost::{Message, Name};

#[path = "../../crates/oxserve-proto/tests/support/peak_heap.rs"]
mod peak_heap;

use peak_heap::{peak_of, Counting};

#[global_allocator]
static ALLOCATOR: Counting = Counting;

fn check<M: Message + Default + Name>(wire: &[u8]) {
    let bound = decoded_bound::<M>(wire);
    let (peak, _) = peak_of::<M>(wire);
    assert!(
        bound >= peak,
        "{}: bound {bound} < peak {peak}",
        M::full_name()
    );
}

fuzz_target!(|data: &[u8]| {
    let Some((&pick, wire)) = data.split_first() else {
        return;
    };
    match pick % 8 {
        0 => check::<PredictRequest>(wire),
        1 => check::<ClassificationRequest>(wire),
        2 => check::<RegressionRequest>(wire),
        3 => check::<MultiInferenceRequest>(wire),
        4 => check::<GetModelMetadataRequest>(wire),
        5 => check::<GetModelStatusRequest>(wire),
        6 => check::<ReloadConfigRequest>(wire),
        _ => check::<PredictionLog>(wire),
    }
});
