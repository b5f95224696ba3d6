//! NumPy `.npy` / `.npz` files to and from tensors, for `oxserve run --inputs` and `--outdir`.

use std::fs::File;
use std::io::{BufWriter, Read};
use std::path::Path;

use anyhow::{bail, Context};
use npyz::num_complex::Complex;
use npyz::{DType, NpyFile, TypeChar, TypeStr, WriterBuilder};
use oxserve_core::{narrow, DType as TfDType, Tensor, TensorData};

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
    NpyFile::new(std::io::BufReader::new(file))
        .map_err(anyhow::Error::from)
        .and_then(from_npy)
        .with_context(|| format!("reading {path}"))
}

fn from_npy<R: Read>(npy: NpyFile<R>) -> anyhow::Result<Tensor> {
    let shape = npy
        .shape()
        .iter()
        .map(|&d| usize::try_from(d))
        .collect::<Result<Vec<_>, _>>()?;
    let fortran = npy.order() == npyz::Order::Fortran;
    let DType::Plain(type_str) = npy.dtype() else {
        bail!("structured and array dtypes are not supported");
    };
    let mut data = match (type_str.type_char(), type_str.size_field()) {
        (TypeChar::Float, 2) => TensorData::Half(npy.into_vec()?),
        (TypeChar::Float, 4) => TensorData::Float(npy.into_vec()?),
        (TypeChar::Float, 8) => TensorData::Double(npy.into_vec()?),
        (TypeChar::Complex, 8) => TensorData::Complex64(
            npy.into_vec::<Complex<f32>>()?
                .into_iter()
                .map(|c| [c.re, c.im])
                .collect(),
        ),
        (TypeChar::Complex, 16) => TensorData::Complex128(
            npy.into_vec::<Complex<f64>>()?
                .into_iter()
                .map(|c| [c.re, c.im])
                .collect(),
        ),
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
    if fortran {
        oxserve_core::for_each_data!(&mut data, values => {
            *values = c_order(std::mem::take(values), &shape)
        });
    }
    Ok(Tensor::new(shape, data)?)
}

/// The values of a Fortran-ordered array (first index fastest, as `np.save` writes a transposed
/// array) in C order (last index fastest), which tensors use.
fn c_order<T: Clone>(values: Vec<T>, shape: &[usize]) -> Vec<T> {
    if values.is_empty() || shape.len() < 2 {
        return values;
    }
    // Every dimension is at least 1 here and their product is the number of values, so no
    // stride overflows.
    let strides: Vec<usize> = shape
        .iter()
        .scan(1, |stride, &dim| {
            let this = *stride;
            *stride *= dim;
            Some(this)
        })
        .collect();
    let mut index = vec![0; shape.len()];
    let mut out = Vec::with_capacity(values.len());
    for _ in 0..values.len() {
        let offset: usize = index.iter().zip(&strides).map(|(i, s)| i * s).sum();
        out.push(values[offset].clone());
        for (i, &dim) in index.iter_mut().zip(shape).rev() {
            *i += 1;
            if *i < dim {
                break;
            }
            *i = 0;
        }
    }
    out
}

/// `tensor` converted to `dtype` as numpy's `astype` converts (C casts: floats to integers
/// truncated, integers wrapped, anything non-zero true): `saved_model_cli run` feeds arrays
/// through `session.run`, which makes each `np.asarray(value, dtype=<the input's dtype>)`. Among
/// numbers and booleans only (`None` otherwise): numpy would parse byte strings as numbers, or
/// make objects of numbers that TensorFlow then refuses as strings.
pub fn cast(tensor: Tensor, dtype: TfDType) -> Option<Tensor> {
    if tensor.dtype() == dtype {
        return Some(tensor);
    }
    let (shape, data) = tensor.into_parts();
    macro_rules! numbers {
        ($variant:ident, $t:ty) => {
            TensorData::$variant(match &data {
                TensorData::Float(v) => v.iter().map(|&x| x as $t).collect(),
                TensorData::Double(v) => v.iter().map(|&x| x as $t).collect(),
                TensorData::Int8(v) => v.iter().map(|&x| x as $t).collect(),
                TensorData::Int16(v) => v.iter().map(|&x| x as $t).collect(),
                TensorData::Int32(v) => v.iter().map(|&x| x as $t).collect(),
                TensorData::Int64(v) => v.iter().map(|&x| x as $t).collect(),
                TensorData::UInt8(v) => v.iter().map(|&x| x as $t).collect(),
                TensorData::UInt16(v) => v.iter().map(|&x| x as $t).collect(),
                TensorData::UInt32(v) => v.iter().map(|&x| x as $t).collect(),
                TensorData::UInt64(v) => v.iter().map(|&x| x as $t).collect(),
                TensorData::Half(v) => v.iter().map(|&x| x.to_f32() as $t).collect(),
                TensorData::BFloat16(v) => v.iter().map(|&x| x.to_f32() as $t).collect(),
                TensorData::Bool(v) => v.iter().map(|&x| u8::from(x) as $t).collect(),
                _ => return None,
            })
        };
    }
    let data = match dtype {
        TfDType::Float => numbers!(Float, f32),
        TfDType::Double => numbers!(Double, f64),
        TfDType::Int8 => numbers!(Int8, i8),
        TfDType::Int16 => numbers!(Int16, i16),
        TfDType::Int32 => numbers!(Int32, i32),
        TfDType::Int64 => numbers!(Int64, i64),
        TfDType::UInt8 => numbers!(UInt8, u8),
        TfDType::UInt16 => numbers!(UInt16, u16),
        TfDType::UInt32 => numbers!(UInt32, u32),
        TfDType::UInt64 => numbers!(UInt64, u64),
        TfDType::Bool => TensorData::Bool(match &data {
            TensorData::Float(v) => v.iter().map(|&x| x != 0.0).collect(),
            TensorData::Double(v) => v.iter().map(|&x| x != 0.0).collect(),
            TensorData::Int8(v) => v.iter().map(|&x| x != 0).collect(),
            TensorData::Int16(v) => v.iter().map(|&x| x != 0).collect(),
            TensorData::Int32(v) => v.iter().map(|&x| x != 0).collect(),
            TensorData::Int64(v) => v.iter().map(|&x| x != 0).collect(),
            TensorData::UInt8(v) => v.iter().map(|&x| x != 0).collect(),
            TensorData::UInt16(v) => v.iter().map(|&x| x != 0).collect(),
            TensorData::UInt32(v) => v.iter().map(|&x| x != 0).collect(),
            TensorData::UInt64(v) => v.iter().map(|&x| x != 0).collect(),
            TensorData::Half(v) => v.iter().map(|&x| x.to_f32() != 0.0).collect(),
            TensorData::BFloat16(v) => v.iter().map(|&x| x.to_f32() != 0.0).collect(),
            _ => return None,
        }),
        // Through float64, which holds every value of the other types numpy would round.
        TfDType::Half | TfDType::BFloat16 => {
            let wide = cast(Tensor::new(shape.clone(), data).ok()?, TfDType::Double)?;
            let TensorData::Double(v) = wide.data() else {
                return None;
            };
            if dtype == TfDType::Half {
                TensorData::Half(v.iter().map(|&x| narrow::f16_from_f64(x)).collect())
            } else {
                TensorData::BFloat16(v.iter().map(|&x| narrow::bf16_from_f64(x)).collect())
            }
        }
        _ => return None,
    };
    Tensor::new(shape, data).ok()
}

/// Writes a tensor as `.npy`: strings as fixed-width byte strings (`|S<n>`, which numpy reads
/// without their trailing NUL bytes), bfloat16 as float32 (numpy has no bfloat16; every value
/// widens exactly).
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
        TensorData::BFloat16(v) => write_all!(v.iter().map(|x| x.to_f32()).collect::<Vec<_>>()),
        TensorData::Complex64(v) => write_all!(v
            .iter()
            .map(|&[re, im]| Complex { re, im })
            .collect::<Vec<_>>()),
        TensorData::Complex128(v) => write_all!(v
            .iter()
            .map(|&[re, im]| Complex { re, im })
            .collect::<Vec<_>>()),
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
    use oxserve_core::f16;

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
    fn complex_bfloat16_and_fortran_order() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.npy");
        let complex = Tensor::new(
            vec![2],
            TensorData::Complex64(vec![[1.0, -2.0], [0.5, 3.0]]),
        );
        write_tensor(&path, complex.as_ref().unwrap()).unwrap();
        assert_eq!(
            read_tensor(path.to_str().unwrap()).unwrap(),
            complex.unwrap()
        );
        let complex = Tensor::new(vec![1], TensorData::Complex128(vec![[1e300, -0.25]])).unwrap();
        write_tensor(&path, &complex).unwrap();
        assert_eq!(read_tensor(path.to_str().unwrap()).unwrap(), complex);
        let bf16 = [1.5f32, -0.0078125].map(oxserve_core::bf16::from_f32);
        write_tensor(&path, &Tensor::vector(TensorData::BFloat16(bf16.to_vec()))).unwrap();
        assert_eq!(
            read_tensor(path.to_str().unwrap()).unwrap().data(),
            &TensorData::Float(vec![1.5, -0.0078125])
        );
        // np.save(path, np.arange(6).reshape(3, 2).T): shape (2, 3), stored column by column.
        let mut writer = npyz::WriteOptions::new()
            .default_dtype()
            .order(npyz::Order::Fortran)
            .shape(&[2, 3])
            .writer(File::create(&path).unwrap())
            .begin_nd()
            .unwrap();
        writer.extend([0i64, 1, 2, 3, 4, 5]).unwrap();
        writer.finish().unwrap();
        let tensor = read_tensor(path.to_str().unwrap()).unwrap();
        assert_eq!(tensor.shape(), &[2, 3]);
        assert_eq!(tensor.data(), &TensorData::Int64(vec![0, 2, 4, 1, 3, 5]));
    }

    #[test]
    fn every_file_error_names_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let garbage = dir.path().join("garbage.npy");
        std::fs::write(&garbage, b"not a numpy file at all").unwrap();
        let zip = dir.path().join("garbage.npz");
        std::fs::write(&zip, b"not a zip").unwrap();
        let truncated = dir.path().join("truncated.npy");
        write_tensor(
            &truncated,
            &Tensor::new(vec![4], TensorData::Float(vec![1.0; 4])).unwrap(),
        )
        .unwrap();
        let bytes = std::fs::read(&truncated).unwrap();
        std::fs::write(&truncated, &bytes[..bytes.len() - 3]).unwrap();
        let directory = dir.path().join("a_directory.npy");
        std::fs::create_dir(&directory).unwrap();
        for path in [
            "/nonexistent/x.npy".into(),
            garbage,
            zip.clone(),
            truncated,
            directory,
        ] {
            let spec = path.display().to_string();
            let err = format!("{:#}", read_tensor(&spec).unwrap_err());
            assert!(err.contains(&spec), "{spec}: {err}");
        }
        let spec = format!("{}[x]", zip.display());
        let err = format!("{:#}", read_tensor(&spec).unwrap_err());
        assert!(err.contains(&zip.display().to_string()), "{err}");
    }

    #[test]
    fn casts_are_numpys() {
        let doubles = Tensor::new(vec![2, 2], TensorData::Double(vec![0.1, -1.9, 3e40, 0.0]));
        let floats = cast(doubles.clone().unwrap(), TfDType::Float).unwrap();
        assert_eq!(floats.shape(), &[2, 2]);
        assert_eq!(
            floats.data(),
            &TensorData::Float(vec![0.1, -1.9, f32::INFINITY, 0.0])
        );
        // Truncated toward zero (out of range is undefined in C, and so in numpy).
        let TensorData::Int32(ints) = cast(doubles.clone().unwrap(), TfDType::Int32)
            .unwrap()
            .into_parts()
            .1
        else {
            panic!("not int32");
        };
        assert_eq!(ints[..2], [0, -1]);
        assert_eq!(
            cast(doubles.unwrap(), TfDType::Bool).unwrap().data(),
            &TensorData::Bool(vec![true, true, true, false])
        );
        let ints = Tensor::vector(TensorData::Int64(vec![300, -1]));
        assert_eq!(
            cast(ints.clone(), TfDType::UInt8).unwrap().data(),
            &TensorData::UInt8(vec![44, 255])
        );
        let halves = cast(
            Tensor::vector(TensorData::Double(vec![0.1, 70000.0])),
            TfDType::Half,
        );
        let expected = [f16::from_f64(0.1), f16::INFINITY];
        assert_eq!(halves.unwrap().data(), &TensorData::Half(expected.to_vec()));
        let back = cast(
            Tensor::vector(TensorData::Half(expected.to_vec())),
            TfDType::Float,
        );
        let expected = vec![f16::from_f64(0.1).to_f32(), f32::INFINITY];
        assert_eq!(back.unwrap().data(), &TensorData::Float(expected));
        let bools = Tensor::vector(TensorData::Bool(vec![true, false]));
        assert_eq!(
            cast(bools, TfDType::Float).unwrap().data(),
            &TensorData::Float(vec![1.0, 0.0])
        );
        let strings = Tensor::vector(TensorData::String(vec![b"1".to_vec()]));
        assert!(cast(strings.clone(), TfDType::Float).is_none());
        assert!(cast(ints, TfDType::String).is_none());
        assert_eq!(cast(strings.clone(), TfDType::String), Some(strings));
    }
}
