//! How `Vec` and the standard library's `HashMap` (hashbrown) grow, one element at a time.

/// hashbrown's control bytes are read in groups of 16 (SSE2; 8 elsewhere, which needs less).
const GROUP_WIDTH: usize = 16;

/// `RawVec`'s first capacity.
pub(super) fn vec_min_capacity(element: usize) -> usize {
    match element {
        1 => 8,
        0..=1024 => 4,
        _ => 1,
    }
}

/// The capacity of a `Vec` after `count` pushes: doubled from the minimum as needed.
pub(super) fn vec_capacity(count: usize, element: usize) -> usize {
    let doubled = count.checked_next_power_of_two().unwrap_or(usize::MAX);
    doubled.max(vec_min_capacity(element))
}

/// hashbrown's `capacity_to_buckets`.
fn buckets_for(capacity: usize, bucket: usize) -> usize {
    if capacity < 15 {
        let min = match bucket {
            0..=1 => 14,
            2..=3 => 7,
            _ => 3,
        };
        match capacity.max(min) {
            0..=3 => 4,
            4..=7 => 8,
            _ => 16,
        }
    } else {
        (capacity.saturating_mul(8) / 7)
            .checked_next_power_of_two()
            .unwrap_or(usize::MAX)
    }
}

/// hashbrown's `bucket_mask_to_capacity`: 7/8 of the buckets, all but one of up to 8.
pub(super) fn bucket_capacity(buckets: usize) -> usize {
    if buckets <= 8 {
        buckets - 1
    } else {
        buckets / 8 * 7
    }
}

/// The buckets of a map after `count` inserts, and before its last resize if it had one: each
/// resize asks for one more than the full capacity.
pub(super) fn map_buckets(count: usize, bucket: usize) -> (usize, Option<usize>) {
    let mut buckets = buckets_for(1, bucket);
    let mut old = None;
    while bucket_capacity(buckets) < count && buckets < usize::MAX {
        old = Some(buckets);
        buckets = buckets_for(bucket_capacity(buckets) + 1, bucket);
    }
    (buckets, old)
}

/// The size of a table's allocation: its buckets, aligned for its control bytes, one per bucket
/// and a group's more.
pub(super) fn map_bytes(buckets: usize, bucket: usize) -> usize {
    (buckets
        .saturating_mul(bucket)
        .saturating_add(GROUP_WIDTH - 1)
        / GROUP_WIDTH
        * GROUP_WIDTH)
        .saturating_add(buckets)
        .saturating_add(GROUP_WIDTH)
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    #[test]
    fn vec_capacity_is_modelled() {
        fn check<T: Default>() {
            let mut values = Vec::<T>::new();
            for count in 1..5000 {
                values.push(T::default());
                assert_eq!(
                    values.capacity(),
                    vec_capacity(count, size_of::<T>()),
                    "{count} elements of {} bytes",
                    size_of::<T>()
                );
            }
        }
        check::<bool>();
        check::<f32>();
        check::<bytes::Bytes>();
        check::<crate::tensorflow::Example>();
        check::<[[u64; 32]; 5]>();
    }

    #[test]
    fn map_capacity_is_modelled() {
        fn check<V: Default>() {
            let bucket = size_of::<(String, V)>();
            let mut map = HashMap::<String, V>::new();
            for count in 1..5000 {
                map.insert(count.to_string(), V::default());
                let (buckets, old) = map_buckets(count, bucket);
                assert_eq!(map.capacity(), bucket_capacity(buckets), "{count}");
                if let Some(old) = old {
                    assert_eq!(old * 2, buckets);
                }
            }
        }
        check::<i32>();
        check::<crate::tensorflow::TensorProto>();
        check::<crate::tensorflow::Feature>();
    }
}
