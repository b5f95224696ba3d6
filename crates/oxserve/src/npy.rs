//! NumPy `.npy` / `.npz` files to and from tensors, for `oxserve run --inputs` and `--outdir`.

use std::fs::File;
use std::io::{BufWriter, Read};
use std::path::Path;

use anyhow::{bail, Context};
use npyz::{DType, NpyFile, TypeChar, TypeStr, WriterBuilder};
use oxserve_core::{Tensor, TensorData};

/// Reads `file.npy`, `file.npz` (its only array) or `file.npz[name]`.
pub fn read_tensor(spec: &str) -> anyhow::Result<Tensor> {
    let (path, member) = match spec.strip_suffix(']').and_then(|s| s.split_once('[')) {
        Some((path, member)) => (path, Some(member)),
        None => (spec, None),
    };
    if path.ends_with(".npz") {
        let mut archive =
            npyz::npz::NpzArchive::open(path).with_context(|| format!("opening {path}"))?;
        let name = match member {
            Some(name) => name.to_string(),
            None => {
                let names: Vec<String> = archive.array_names().map(String::from).collect();
                match names.as_slice() {
                    [only] => only.clone(),
                    _ => bail!(
                        "{path} holds {} arrays ({}); name one as {path}[name]",
                        names.len(),
                        names.join(", ")
                    ),
                }
            }
        };
        let npy = archive
            .by_name(&name)
            .with_context(|| format!("reading {name} from {path}"))?
            .with_context(|| format!("{path} has no array named {name}"))?;
        return from_npy(npy).with_context(|| format!("reading {name} from {path}"));
    }
    if member.is_some() {
        bail!("{spec}: only .npz files hold named arrays");
    }
    let file = File::open(path).with_context(|| format!("opening {path}"))?;
    from_npy(NpyFile::new(std::io::BufReader::new(file))?)
        .with_context(|| format!("reading {path}"))
}

fn from_npy<R: Read>(npy: NpyFile<R>) -> anyhow::Result<Tensor> {
    let shape = npy
        .shape()
        .iter()
        .map(|&d| usize::try_from(d))
        .collect::<Result<Vec<_>, _>>()?;
    if npy.order() == npyz::Order::Fortran {
        bail!("Fortran-ordered arrays are not supported; save with np.ascontiguousarray");
    }
    let DType::Plain(type_str) = npy.dtype() else {
        bail!("structured and array dtypes are not supported");
    };
    let data = match (type_str.type_char(), type_str.size_field()) {
        (TypeChar::Float, 2) => TensorData::Half(npy.into_vec()?),
        (TypeChar::Float, 4) => TensorData::Float(npy.into_vec()?),
        (TypeChar::Float, 8) => TensorData::Double(npy.into_vec()?),
        (TypeChar::Int, 1) => TensorData::Int8(npy.into_vec()?),
        (TypeChar::Int, 2) => TensorData::Int16(npy.into_vec()?),
        (TypeChar::Int, 4) => TensorData::Int32(npy.into_vec()?),
        (TypeChar::Int, 8) => TensorData::Int64(npy.into_vec()?),
        (TypeChar::Uint, 1) => TensorData::UInt8(npy.into_vec()?),
        (TypeChar::Uint, 2) => TensorData::UInt16(npy.into_vec()?),
        (TypeChar::Uint, 4) => TensorData::UInt32(npy.into_vec()?),
        (TypeChar::Uint, 8) => TensorData::UInt64(npy.into_vec()?),
        (TypeChar::Bool, 1) => TensorData::Bool(npy.into_vec()?),
        (TypeChar::ByteStr, _) | (TypeChar::RawData, _) => TensorData::String(npy.into_vec()?),
        (TypeChar::UnicodeStr, _) => TensorData::String(
            npy.into_vec::<String>()?
                .into_iter()
                .map(String::into_bytes)
                .collect(),
        ),
        _ => bail!("numpy dtype {type_str} is not supported"),
    };
    Ok(Tensor::new(shape, data)?)
}

/// Writes a tensor as `.npy` (strings as fixed-width byte strings, `|S<n>`).
pub fn write_tensor(path: &Path, tensor: &Tensor) -> anyhow::Result<()> {
    let shape: Vec<u64> = tensor.shape().iter().map(|&d| d as u64).collect();
    let file =
        BufWriter::new(File::create(path).with_context(|| format!("creating {}", path.display()))?);
    macro_rules! write_all {
        ($values:expr) => {{
            let mut writer = npyz::WriteOptions::new()
                .default_dtype()
                .shape(&shape)
                .writer(file)
                .begin_nd()?;
            writer.extend($values.iter().copied())?;
            writer.finish()?;
        }};
    }
    match tensor.data() {
        TensorData::Float(v) => write_all!(v),
        TensorData::Double(v) => write_all!(v),
        TensorData::Int8(v) => write_all!(v),
        TensorData::Int16(v) => write_all!(v),
        TensorData::Int32(v) => write_all!(v),
        TensorData::Int64(v) => write_all!(v),
        TensorData::UInt8(v) => write_all!(v),
        TensorData::UInt16(v) => write_all!(v),
        TensorData::UInt32(v) => write_all!(v),
        TensorData::UInt64(v) => write_all!(v),
        TensorData::Half(v) => write_all!(v),
        TensorData::Bool(v) => write_all!(v),
        TensorData::BFloat16(_) | TensorData::Complex64(_) | TensorData::Complex128(_) => {
            bail!(
                "{} tensors cannot be written as .npy",
                tensor.dtype().name()
            )
        }
        TensorData::String(values) => {
            let width = values.iter().map(Vec::len).max().unwrap_or(0).max(1);
            let type_str: TypeStr = format!("|S{width}").parse()?;
            let mut writer = npyz::WriteOptions::<[u8]>::new()
                .dtype(DType::Plain(type_str))
                .shape(&shape)
                .writer(file)
                .begin_nd()?;
            for value in values {
                writer.push(value)?;
            }
            writer.finish()?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_numbers_and_strings() {
        let dir = tempfile::tempdir().unwrap();
        let tensors = [
            Tensor::new(vec![2, 2], TensorData::Float(vec![1.0, 2.5, -3.0, 4.0])).unwrap(),
            Tensor::new(vec![3], TensorData::Int64(vec![1, -2, 3])).unwrap(),
            Tensor::new(vec![2], TensorData::Bool(vec![true, false])).unwrap(),
            Tensor::new(
                vec![2],
                TensorData::String(vec![b"ab".to_vec(), b"c".to_vec()]),
            )
            .unwrap(),
        ];
        for (i, tensor) in tensors.iter().enumerate() {
            let path = dir.path().join(format!("{i}.npy"));
            write_tensor(&path, tensor).unwrap();
            assert_eq!(&read_tensor(path.to_str().unwrap()).unwrap(), tensor);
        }
    }

    #[test]
    fn missing_file_is_a_clear_error() {
        let err = read_tensor("/nonexistent/x.npy").unwrap_err();
        assert!(format!("{err:#}").contains("/nonexistent/x.npy"));
    }
}
