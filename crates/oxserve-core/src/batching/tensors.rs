//! Tensor surgery along the batch dimension (dimension 0): concatenation of the requests of a
//! batch, padding (rows for `allowed_batch_sizes`, trailing dimensions for
//! `pad_variable_length_inputs`), and splitting a batched output back into per-request rows.

use crate::error::{Error, Result};
use crate::tensor::{element_count, Tensor, TensorData};

/// Applies a generic function body to the `Vec` of every variant, rebuilding the same variant.
macro_rules! map_data {
    ($data:expr, $v:ident => $body:expr) => {
        match $data {
            TensorData::Float($v) => TensorData::Float($body),
            TensorData::Double($v) => TensorData::Double($body),
            TensorData::Int8($v) => TensorData::Int8($body),
            TensorData::Int16($v) => TensorData::Int16($body),
            TensorData::Int32($v) => TensorData::Int32($body),
            TensorData::Int64($v) => TensorData::Int64($body),
            TensorData::UInt8($v) => TensorData::UInt8($body),
            TensorData::UInt16($v) => TensorData::UInt16($body),
            TensorData::UInt32($v) => TensorData::UInt32($body),
            TensorData::UInt64($v) => TensorData::UInt64($body),
            TensorData::Half($v) => TensorData::Half($body),
            TensorData::BFloat16($v) => TensorData::BFloat16($body),
            TensorData::Complex64($v) => TensorData::Complex64($body),
            TensorData::Complex128($v) => TensorData::Complex128($body),
            TensorData::Bool($v) => TensorData::Bool($body),
            TensorData::String($v) => TensorData::String($body),
        }
    };
}

/// The number of elements of one row (one index of dimension 0) of `shape`.
pub fn row_len(shape: &[usize]) -> Result<usize> {
    element_count(shape.get(1..).unwrap_or(&[]))
}

/// Concatenates tensors of one dtype and equal non-batch dimensions along dimension 0, then
/// appends `pad_rows` copies of the first row of the last tensor (TF Serving pads a batch up to
/// an allowed size with a row it knows to be a valid input).
pub fn concat(parts: Vec<Tensor>, pad_rows: usize) -> Result<Tensor> {
    let Some(first) = parts.first() else {
        return Err(Error::internal("Batch size expected to be positive; was 0"));
    };
    let mut shape = first.shape().to_vec();
    if shape.is_empty() {
        return Err(Error::invalid_argument(
            "Batching Run() input tensors must have at least one dimension",
        ));
    }
    let row = row_len(&shape)?;
    let mut rows = 0usize;
    for part in &parts {
        if part.shape().get(1..) != shape.get(1..) || part.dtype() != first.dtype() {
            return Err(Error::internal(format!(
                "Tensors of shape {:?} and {:?} cannot be concatenated along dimension 0",
                shape,
                part.shape()
            )));
        }
        rows += part.shape()[0];
    }
    let last_len = parts.last().map_or(0, Tensor::len);
    let last_has_rows = parts.last().is_some_and(|t| !t.is_empty() || row == 0);
    if pad_rows > 0 && !last_has_rows {
        return Err(Error::invalid_argument(
            "Got empty tensor in batch of non-empty tensors.",
        ));
    }
    shape[0] = rows + pad_rows;
    let total = element_count(&shape)?;
    let mut iter = parts.into_iter().map(|t| t.into_parts().1);
    let Some(head) = iter.next() else {
        return Err(Error::internal("Batch size expected to be positive; was 0"));
    };
    // try_reserve: padding up to a huge allowed batch size is an error, not an abort.
    let mut data = map_data!(head, v => {
        let mut out = v;
        out.try_reserve(total - out.len()).map_err(|_| {
            Error::resource_exhausted(format!(
                "cannot allocate a batch of {total} elements (shape {shape:?})"
            ))
        })?;
        out
    });
    for part in iter {
        append(&mut data, part)?;
    }
    if pad_rows > 0 {
        let start = data.len() - last_len;
        pad_with_row(&mut data, start, row, pad_rows);
    }
    Tensor::new(shape, data)
}

fn append(acc: &mut TensorData, part: TensorData) -> Result<()> {
    macro_rules! arms {
        ($($variant:ident),*) => {
            match (acc, part) {
                $((TensorData::$variant(a), TensorData::$variant(b)) => {
                    // `append` moves the elements (for strings: the Vec headers, no deep copy).
                    let mut b = b;
                    a.append(&mut b);
                    Ok(())
                })*
                _ => Err(Error::internal("tensors of different dtypes in one batch")),
            }
        };
    }
    arms!(
        Float, Double, Int8, Int16, Int32, Int64, UInt8, UInt16, UInt32, UInt64, Half, BFloat16,
        Complex64, Complex128, Bool, String
    )
}

/// Appends `count` copies of the `row` elements starting at `start`.
fn pad_with_row(data: &mut TensorData, start: usize, row: usize, count: usize) {
    fn pad<T: Clone>(v: &mut Vec<T>, start: usize, row: usize, count: usize) {
        v.reserve(row * count);
        for _ in 0..count {
            v.extend_from_within(start..start + row);
        }
    }
    crate::for_each_data!(data, v => pad(v, start, row, count))
}

/// Splits a batched tensor into consecutive row blocks of the given sizes (which must add up to
/// dimension 0); rows beyond them (padding) are dropped.
pub fn split(tensor: Tensor, sizes: &[usize]) -> Result<Vec<Tensor>> {
    let (shape, data) = tensor.into_parts();
    let Some(&rows) = shape.first() else {
        return Err(Error::failed_precondition(
            "Batched output tensor has 0 dimensions",
        ));
    };
    let wanted: usize = sizes.iter().sum();
    if wanted > rows {
        return Err(Error::failed_precondition(
            "Batched output tensor's 0th dimension does not equal the sum of the 0th dimension sizes of the input tensors",
        ));
    }
    let row = row_len(&shape)?;
    fn cut<T>(mut v: Vec<T>, row: usize, sizes: &[usize]) -> Vec<Vec<T>> {
        let used: usize = sizes.iter().sum::<usize>() * row;
        v.truncate(used);
        // Split from the back: `split_off` moves the tail without cloning elements.
        let mut pieces: Vec<Vec<T>> = sizes
            .iter()
            .rev()
            .map(|&n| {
                let at = v.len() - n * row;
                v.split_off(at)
            })
            .collect();
        pieces.reverse();
        pieces
    }
    let mut out: Vec<Tensor> = Vec::with_capacity(sizes.len());
    macro_rules! arms {
        ($($variant:ident),*) => {
            match data {
                $(TensorData::$variant(v) => {
                    for (piece, &n) in cut(v, row, sizes).into_iter().zip(sizes) {
                        let mut piece_shape = shape.clone();
                        piece_shape[0] = n;
                        out.push(Tensor::new(piece_shape, TensorData::$variant(piece))?);
                    }
                })*
            }
        };
    }
    arms!(
        Float, Double, Int8, Int16, Int32, Int64, UInt8, UInt16, UInt32, UInt64, Half, BFloat16,
        Complex64, Complex128, Bool, String
    );
    Ok(out)
}

/// Rows `start..start + count` of a tensor, copied.
pub fn slice_rows(tensor: &Tensor, start: usize, count: usize) -> Result<Tensor> {
    let row = row_len(tensor.shape())?;
    let mut shape = tensor.shape().to_vec();
    if shape.first().is_none_or(|&rows| start + count > rows) {
        return Err(Error::internal("row slice out of range"));
    }
    shape[0] = count;
    let (a, b) = (start * row, (start + count) * row);
    let data = map_data!(tensor.data(), v => v[a..b].to_vec());
    Tensor::new(shape, data)
}

/// Pads tensors of one rank to the largest size of each non-batch dimension among them
/// ([`pad_to`]).
pub fn pad_to_widest(parts: Vec<Tensor>) -> Result<Vec<Tensor>> {
    let mut widest = parts.first().map_or_else(Vec::new, |t| t.shape().to_vec());
    for part in &parts {
        for (w, &d) in widest.iter_mut().zip(part.shape()) {
            *w = (*w).max(d);
        }
    }
    parts
        .into_iter()
        .map(|part| pad_to(part, &widest))
        .collect()
}

/// Pads a tensor's non-batch dimensions up to `target` (same rank; `target[0]` is ignored) with
/// its first element, as TF Serving's `AddPadding` does for `pad_variable_length_inputs`.
pub fn pad_to(tensor: Tensor, target: &[usize]) -> Result<Tensor> {
    let shape = tensor.shape().to_vec();
    if shape.len() != target.len() {
        return Err(Error::internal("padding to a shape of another rank"));
    }
    if shape.get(1..) == target.get(1..) {
        return Ok(tensor);
    }
    if tensor.is_empty() {
        return Err(Error::invalid_argument(
            "Got empty tensor in batch of non-empty tensors.",
        ));
    }
    let mut out_shape = target.to_vec();
    out_shape[0] = shape[0];
    let total = element_count(&out_shape)?;
    let (_, data) = tensor.into_parts();
    fn pad<T: Clone>(
        v: Vec<T>,
        shape: &[usize],
        out_shape: &[usize],
        total: usize,
    ) -> Result<Vec<T>> {
        // try_reserve: an allocation that cannot succeed is an error for the batch, not an abort.
        let mut out = Vec::new();
        out.try_reserve_exact(total).map_err(|_| {
            Error::resource_exhausted(format!(
                "cannot allocate a padded input of {total} elements (shape {out_shape:?})"
            ))
        })?;
        out.resize(total, v[0].clone());
        let rank = shape.len();
        let inner = shape[rank - 1];
        // Strides of the output, to place each innermost run of the input.
        let mut out_strides = vec![1usize; rank];
        for d in (0..rank - 1).rev() {
            out_strides[d] = out_strides[d + 1] * out_shape[d + 1];
        }
        let runs = v.len().checked_div(inner).unwrap_or(0);
        let mut index = vec![0usize; rank.saturating_sub(1)];
        for run in 0..runs {
            let dest: usize = index.iter().zip(&out_strides).map(|(i, s)| i * s).sum();
            out[dest..dest + inner].clone_from_slice(&v[run * inner..(run + 1) * inner]);
            // Advance the multi-index over all dimensions but the innermost.
            for d in (0..index.len()).rev() {
                index[d] += 1;
                if index[d] < shape[d] {
                    break;
                }
                index[d] = 0;
            }
        }
        Ok(out)
    }
    let data = map_data!(data, v => pad(v, &shape, &out_shape, total)?);
    Tensor::new(out_shape, data)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn floats(shape: &[usize], values: &[f32]) -> Tensor {
        Tensor::new(shape.to_vec(), TensorData::Float(values.to_vec())).unwrap()
    }

    #[test]
    fn concat_then_split_gives_back_each_part() {
        let a = floats(&[1, 2], &[1., 2.]);
        let b = floats(&[3, 2], &[3., 4., 5., 6., 7., 8.]);
        let batch = concat(vec![a.clone(), b.clone()], 0).unwrap();
        assert_eq!(batch.shape(), [4, 2]);
        assert_eq!(split(batch, &[1, 3]).unwrap(), vec![a, b]);
    }

    #[test]
    fn strings_concat_and_split_without_loss() {
        let a = Tensor::vector(TensorData::String(vec![b"x".to_vec(), vec![0xff, 0]]));
        let b = Tensor::vector(TensorData::String(vec![b"".to_vec()]));
        let batch = concat(vec![a.clone(), b.clone()], 1).unwrap();
        assert_eq!(batch.shape(), [4]);
        assert_eq!(
            batch.data(),
            &TensorData::String(vec![b"x".to_vec(), vec![0xff, 0], vec![], vec![]])
        );
        assert_eq!(split(batch, &[2, 1]).unwrap(), vec![a, b]);
    }

    #[test]
    fn every_dtype_concatenates() {
        use half::{bf16, f16};
        let (h, b) = (f16::from_f32, bf16::from_f32);
        let cases = [
            (
                TensorData::Half(vec![h(1.0)]),
                TensorData::Half(vec![h(2.0)]),
                TensorData::Half(vec![h(1.0), h(2.0), h(2.0)]),
            ),
            (
                TensorData::BFloat16(vec![b(1.0)]),
                TensorData::BFloat16(vec![b(2.0)]),
                TensorData::BFloat16(vec![b(1.0), b(2.0), b(2.0)]),
            ),
            (
                TensorData::Complex64(vec![[1.0, -1.0]]),
                TensorData::Complex64(vec![[2.0, -2.0]]),
                TensorData::Complex64(vec![[1.0, -1.0], [2.0, -2.0], [2.0, -2.0]]),
            ),
            (
                TensorData::Complex128(vec![[1.0, 0.5]]),
                TensorData::Complex128(vec![[2.0, 0.5]]),
                TensorData::Complex128(vec![[1.0, 0.5], [2.0, 0.5], [2.0, 0.5]]),
            ),
        ];
        for (first, second, want) in cases {
            // Two parts, and a padding row repeating the last one.
            let batch = concat(vec![Tensor::vector(first), Tensor::vector(second)], 1).unwrap();
            assert_eq!(batch, Tensor::new(vec![3], want).unwrap());
        }
    }

    #[test]
    fn padding_rows_repeat_the_first_row_of_the_last_part() {
        let a = floats(&[1, 2], &[1., 2.]);
        let b = floats(&[2, 2], &[3., 4., 5., 6.]);
        let batch = concat(vec![a, b], 2).unwrap();
        assert_eq!(batch.shape(), [5, 2]);
        assert_eq!(
            batch.data(),
            &TensorData::Float(vec![1., 2., 3., 4., 5., 6., 3., 4., 3., 4.])
        );
        // The padding rows are dropped when splitting.
        let parts = split(batch, &[1, 2]).unwrap();
        assert_eq!(parts[1].shape(), [2, 2]);
        assert_eq!(parts[1].data(), &TensorData::Float(vec![3., 4., 5., 6.]));
    }

    #[test]
    fn padding_beyond_memory_is_an_error() {
        // A per-model allowed_batch_sizes of 2^62 rows: no allocation, no abort.
        let err = concat(vec![floats(&[1, 2], &[1., 2.])], (1 << 62) - 1).unwrap_err();
        assert_eq!(err.code, crate::Code::ResourceExhausted, "{err}");
    }

    #[test]
    fn split_checks_the_batch_dimension() {
        let err = split(floats(&[], &[1.]), &[1]).unwrap_err();
        assert!(err.message.contains("0 dimensions"));
        let err = split(floats(&[2], &[1., 2.]), &[2, 1]).unwrap_err();
        assert_eq!(err.code, crate::Code::FailedPrecondition);
    }

    #[test]
    fn concat_refuses_scalars_and_mismatched_shapes() {
        let err = concat(vec![floats(&[], &[1.])], 0).unwrap_err();
        assert!(err.message.contains("at least one dimension"));
        assert!(concat(vec![floats(&[1, 2], &[1., 2.]), floats(&[1, 1], &[1.])], 0).is_err());
        assert!(concat(vec![], 0).is_err());
    }

    #[test]
    fn pad_to_fills_trailing_dimensions_with_the_first_element() {
        let t = Tensor::new(vec![2, 1, 2], TensorData::Int32(vec![7, 1, 2, 3])).unwrap();
        let padded = pad_to(t, &[0, 2, 3]).unwrap();
        assert_eq!(padded.shape(), [2, 2, 3]);
        assert_eq!(
            padded.data(),
            &TensorData::Int32(vec![7, 1, 7, 7, 7, 7, 2, 3, 7, 7, 7, 7])
        );
        let s = Tensor::new(vec![1, 1], TensorData::String(vec![b"a".to_vec()])).unwrap();
        let padded = pad_to(s, &[0, 3]).unwrap();
        assert_eq!(
            padded.data(),
            &TensorData::String(vec![b"a".to_vec(), b"a".to_vec(), b"a".to_vec()])
        );
        let empty = Tensor::new(vec![0, 1], TensorData::Float(vec![])).unwrap();
        assert!(pad_to(empty, &[0, 2]).is_err());
    }

    #[test]
    fn slice_rows_copies_a_block() {
        let t = floats(&[3, 1], &[1., 2., 3.]);
        assert_eq!(slice_rows(&t, 1, 2).unwrap(), floats(&[2, 1], &[2., 3.]));
        assert!(slice_rows(&t, 2, 2).is_err());
    }
}
