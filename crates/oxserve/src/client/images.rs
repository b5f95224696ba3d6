//! Image files into model inputs: the raw file bytes for a string input (the model decodes them),
//! or decoded, resized and scaled pixels for a numeric image input of shape `[batch, height,
//! width, channels]`.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use base64::Engine;
use oxserve_core::{DType, NamedTensors, Signature, Tensor, TensorData};

/// How pixel values 0..=255 map to float inputs: `min + p / 255 * (max - min)`, computed in
/// float64 (and rounded to float32 for a float32 input).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Range {
    pub min: f64,
    pub max: f64,
}

impl std::str::FromStr for Range {
    type Err = String;

    fn from_str(s: &str) -> Result<Range, String> {
        let (a, b) = s
            .split_once(',')
            .ok_or_else(|| format!("expected MIN,MAX (e.g. 0,1 or -1,1 or 0,255), got {s:?}"))?;
        // Within float32's range, for float32 inputs to take them.
        let parse = |x: &str| match x.trim().parse::<f64>() {
            Ok(v) if v.is_finite() && v.abs() <= f64::from(f32::MAX) => Ok(v),
            Ok(_) => Err(format!("{x:?} is not a finite float32 number")),
            Err(_) => Err(format!("{x:?} is not a number")),
        };
        Ok(Range {
            min: parse(a)?,
            max: parse(b)?,
        })
    }
}

/// A decoded image: (height, width) and its pixel values, 0.0..=255.0 (fractional once resized).
type Decoded = ((usize, usize), Vec<f32>);

/// The batches to send for `files`: one batch, or one per image when the model's input has no
/// fixed height and width and the images differ in size.
pub fn image_batches(
    files: &[PathBuf],
    signature_key: &str,
    signature: &Signature,
    range: Range,
) -> anyhow::Result<Vec<NamedTensors>> {
    let (alias, spec) = match signature.inputs.iter().collect::<Vec<_>>().as_slice() {
        [(alias, spec)] => ((*alias).clone(), (*spec).clone()),
        _ => bail!(
            "--image needs a signature with one input; {signature_key} has {} ({})",
            signature.inputs.len(),
            signature
                .inputs
                .keys()
                .cloned()
                .collect::<Vec<_>>()
                .join(", ")
        ),
    };
    let read =
        |path: &PathBuf| std::fs::read(path).with_context(|| format!("--image {}", path.display()));
    if spec.dtype == DType::String {
        let inner: Vec<usize> = match &spec.shape {
            Some(dims) if dims.len() > 1 => {
                if dims[1..].iter().any(|&d| d != 1 && d != -1) {
                    bail!(
                        "input {alias} has shape {dims:?}: it takes more than one string per instance, not an image file"
                    );
                }
                vec![1; dims.len() - 1]
            }
            _ => Vec::new(),
        };
        let bytes = files.iter().map(read).collect::<anyhow::Result<Vec<_>>>()?;
        let mut shape = vec![bytes.len()];
        shape.extend(inner);
        let tensor = Tensor::new(shape, TensorData::String(bytes))?;
        return Ok(vec![vec![(alias, tensor)]]);
    }
    let dims = match &spec.shape {
        Some(dims) if dims.len() == 4 => dims.clone(),
        other => bail!(
            "input {alias} ({}, shape {}) is not an image input: --image needs a string input (encoded images) or a [batch, height, width, channels] number input",
            spec.dtype.proto_name(),
            other.as_ref().map_or("unknown".into(), |d| format!("{d:?}"))
        ),
    };
    let channels = match dims[3] {
        -1 | 3 => 3,
        c @ (1 | 4) => c as usize,
        c => bail!("input {alias} has {c} channels: only 1 (gray), 3 (RGB) or 4 (RGBA) are images"),
    };
    if !matches!(
        spec.dtype,
        DType::Float | DType::Double | DType::UInt8 | DType::Int32 | DType::Int64
    ) {
        bail!(
            "input {alias} is {}: --image sends floats (scaled by --image_range) or integer pixels",
            spec.dtype.proto_name()
        );
    }
    let mut images = Vec::with_capacity(files.len());
    for path in files {
        let size = (
            usize::try_from(dims[1]).ok().filter(|&h| h > 0),
            usize::try_from(dims[2]).ok().filter(|&w| w > 0),
        );
        images.push(decode(path, &read(path)?, size, channels)?);
    }
    let same_size = images.windows(2).all(|w| w[0].0 == w[1].0);
    let groups: Vec<Vec<Decoded>> = if same_size {
        vec![images]
    } else {
        images.into_iter().map(|i| vec![i]).collect()
    };
    groups
        .into_iter()
        .map(|group| {
            let (h, w) = group[0].0;
            let n = group.len();
            let pixels: Vec<f32> = group.into_iter().flat_map(|(_, p)| p).collect();
            let scale = |p: f32| range.min + f64::from(p) / 255.0 * (range.max - range.min);
            // Resized pixels fall between integers: rounded as tf.round (ties to even) would,
            // within 0..=255 by construction.
            let integer = |p: f32| p.round_ties_even() as u8;
            let data = match spec.dtype {
                DType::Float => {
                    TensorData::Float(pixels.into_iter().map(|p| scale(p) as f32).collect())
                }
                DType::Double => TensorData::Double(pixels.into_iter().map(scale).collect()),
                DType::UInt8 => TensorData::UInt8(pixels.into_iter().map(integer).collect()),
                DType::Int32 => {
                    TensorData::Int32(pixels.into_iter().map(|p| integer(p).into()).collect())
                }
                _ => TensorData::Int64(pixels.into_iter().map(|p| integer(p).into()).collect()),
            };
            Ok(vec![(
                alias.clone(),
                Tensor::new(vec![n, h, w, channels], data)?,
            )])
        })
        .collect()
}

/// Decodes an image file into `channels` channels, resized to `(height, width)` where the input
/// fixes them.
fn decode(
    path: &Path,
    bytes: &[u8],
    (height, width): (Option<usize>, Option<usize>),
    channels: usize,
) -> anyhow::Result<Decoded> {
    if let Err(reason) = jpeg_is_whole(bytes) {
        bail!("--image {}: {reason}", path.display());
    }
    let image = image::load_from_memory(bytes).with_context(|| {
        format!(
            "--image {}: cannot decode it as a JPEG or PNG",
            path.display()
        )
    })?;
    let size = (image.height() as usize, image.width() as usize);
    // Bytes as TensorFlow's decode_png(dtype=uint8) makes them of 16-bit samples: the high byte.
    // (16-bit conversions of 8-bit images are exact.)
    let byte = |v: u16| f32::from(v >> 8);
    let pixels: Vec<f32> = match channels {
        1 if image.color().has_color() => image
            .to_rgb16()
            .pixels()
            .map(|p| {
                let [r, g, b] = p.0.map(byte);
                // tf.image.rgb_to_grayscale of float pixels: ITU-R 601 weights as TensorFlow
                // writes them (the image crate's to_luma uses Rec. 709's).
                r * 0.2989 + g * 0.587 + b * 0.114
            })
            .collect(),
        1 => image.to_luma16().into_raw().into_iter().map(byte).collect(),
        4 => image.to_rgba16().into_raw().into_iter().map(byte).collect(),
        _ => image.to_rgb16().into_raw().into_iter().map(byte).collect(),
    };
    let out = (height.unwrap_or(size.0), width.unwrap_or(size.1));
    if out == size {
        return Ok((size, pixels));
    }
    let resized = resize_bilinear(&pixels, size, channels, out).with_context(|| {
        format!(
            "--image {}: the model takes {}x{} images, too large to resize to",
            path.display(),
            out.0,
            out.1
        )
    })?;
    Ok((out, resized))
}

/// An empty vector with room for `len` elements; `None` where that memory cannot be had (the
/// sizes come from the model's signature).
fn buffer<T>(len: usize) -> Option<Vec<T>> {
    let mut v = Vec::new();
    v.try_reserve_exact(len).ok()?;
    Some(v)
}

/// Where one output row (or column) samples the input: between `lower` and `upper`, `lerp` of the
/// way to `upper`.
struct Sample {
    lower: usize,
    upper: usize,
    lerp: f32,
}

/// The samples of `out_size` outputs over `in_size` inputs, as TensorFlow's
/// `compute_interpolation_weights` with its `HalfPixelScaler` computes them, in f32 arithmetic
/// step for step so that the results are the same floats.
fn samples(in_size: usize, out_size: usize) -> Option<Vec<Sample>> {
    let scale = in_size as f32 / out_size as f32;
    let mut samples = buffer(out_size)?;
    samples.extend((0..out_size).map(|i| {
        let at = (i as f32 + 0.5) * scale - 0.5;
        let floor = at.floor();
        Sample {
            // `as` saturates: a position before the first pixel samples the first.
            lower: floor as usize,
            upper: (at.ceil() as usize).min(in_size - 1),
            lerp: at - floor,
        }
    }));
    Some(samples)
}

/// Resizes interleaved `pixels` of `size` (height, width) to `out` as `tf.image.resize` does by
/// default (bilinear, half-pixel centers, no antialiasing) on float pixels: Keras models are
/// trained on images resized that way, without rounding back to bytes; the `image` crate's
/// filters on bytes gave outputs up to ~5e-4 away from the model's on TensorFlow's resize.
fn resize_bilinear(
    pixels: &[f32],
    (height, width): (usize, usize),
    channels: usize,
    (out_height, out_width): (usize, usize),
) -> Option<Vec<f32>> {
    // The output first: it is the largest, and the one whose size may not fit in a usize.
    let mut out = buffer(out_height.checked_mul(out_width)?.checked_mul(channels)?)?;
    let ys = samples(height, out_height)?;
    let xs = samples(width, out_width)?;
    let row = width * channels;
    for y in &ys {
        let (top, bottom) = (&pixels[y.lower * row..], &pixels[y.upper * row..]);
        for x in &xs {
            let (left, right) = (x.lower * channels, x.upper * channels);
            for c in 0..channels {
                // TensorFlow's compute_lerp, in its order of operations.
                let top = top[left + c] + (top[right + c] - top[left + c]) * x.lerp;
                let bottom = bottom[left + c] + (bottom[right + c] - bottom[left + c]) * x.lerp;
                out.push(top + (bottom - top) * y.lerp);
            }
        }
    }
    Some(out)
}

/// Whether a JPEG file is whole: the JPEG decoder makes up the pixels of a file cut short (a
/// copy or a download that stopped), and such an image would be sent as if it were the real one.
/// The file's segments are walked to its end-of-image marker. Not a JPEG: `Ok` (the decoder
/// judges other formats).
fn jpeg_is_whole(bytes: &[u8]) -> Result<(), String> {
    const CUT: &str = "the JPEG is truncated (it ends before its end-of-image marker)";
    if !bytes.starts_with(&[0xFF, 0xD8]) {
        return Ok(());
    }
    let mut at = 2;
    loop {
        // A marker, after any fill bytes (0xFF).
        if bytes.get(at) != Some(&0xFF) {
            return Err(if at >= bytes.len() {
                CUT.to_string()
            } else {
                format!("the JPEG is corrupt (no marker at byte {at})")
            });
        }
        while bytes.get(at) == Some(&0xFF) {
            at += 1;
        }
        let Some(&marker) = bytes.get(at) else {
            return Err(CUT.into());
        };
        at += 1;
        match marker {
            // End of image: whatever follows (some cameras append data) is not the image's.
            0xD9 => return Ok(()),
            // Markers without a length: TEM, RSTn.
            0x01 | 0xD0..=0xD7 => continue,
            _ => {}
        }
        let Some(length) = bytes.get(at..at + 2) else {
            return Err(CUT.into());
        };
        at += usize::from(u16::from_be_bytes([length[0], length[1]]));
        if at > bytes.len() {
            return Err(CUT.into());
        }
        if marker == 0xDA {
            // Start of scan: entropy-coded data up to the next marker that is neither a stuffed
            // 0xFF (0xFF00) nor a restart (0xFFD0..0xFFD7).
            loop {
                let Some(i) = bytes[at..].iter().position(|&b| b == 0xFF) else {
                    return Err(CUT.into());
                };
                at += i;
                match bytes.get(at + 1) {
                    None => return Err(CUT.into()),
                    Some(0x00 | 0xD0..=0xD7) => at += 2,
                    Some(_) => break,
                }
            }
        }
    }
}

/// A REST row-format request body for tensors that share a batch dimension.
pub fn instances_body(signature: &str, inputs: &NamedTensors) -> anyhow::Result<Vec<u8>> {
    let batch = inputs
        .first()
        .and_then(|(_, t)| t.shape().first().copied())
        .context("no input tensor")?;
    let mut out = String::with_capacity(64);
    out.push('{');
    if !signature.is_empty() {
        out.push_str(&format!(
            "\"signature_name\":{},",
            serde_json::Value::from(signature)
        ));
    }
    out.push_str("\"instances\":[");
    for row in 0..batch {
        if row > 0 {
            out.push(',');
        }
        if inputs.len() == 1 {
            write_row(&mut out, &inputs[0].1, row)?;
        } else {
            out.push('{');
            for (i, (alias, tensor)) in inputs.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&serde_json::Value::from(alias.as_str()).to_string());
                out.push(':');
                write_row(&mut out, tensor, row)?;
            }
            out.push('}');
        }
    }
    out.push_str("]}");
    Ok(out.into_bytes())
}

fn write_row(out: &mut String, tensor: &Tensor, row: usize) -> anyhow::Result<()> {
    let shape = tensor.shape();
    let batch = *shape.first().context("a scalar tensor has no rows")?;
    let per_row = tensor.len() / batch.max(1);
    let mut index = row * per_row;
    write_nested(out, tensor.data(), &shape[1..], &mut index);
    Ok(())
}

fn write_nested(out: &mut String, data: &TensorData, dims: &[usize], index: &mut usize) {
    use std::fmt::Write;
    if dims.is_empty() {
        let i = *index;
        *index += 1;
        let _ = match data {
            TensorData::Float(v) => write!(out, "{}", v[i]),
            TensorData::Double(v) => write!(out, "{}", v[i]),
            TensorData::Int8(v) => write!(out, "{}", v[i]),
            TensorData::Int16(v) => write!(out, "{}", v[i]),
            TensorData::Int32(v) => write!(out, "{}", v[i]),
            TensorData::Int64(v) => write!(out, "{}", v[i]),
            TensorData::UInt8(v) => write!(out, "{}", v[i]),
            TensorData::UInt16(v) => write!(out, "{}", v[i]),
            TensorData::UInt32(v) => write!(out, "{}", v[i]),
            TensorData::UInt64(v) => write!(out, "{}", v[i]),
            TensorData::Half(v) => write!(out, "{}", v[i]),
            TensorData::BFloat16(v) => write!(out, "{}", v[i]),
            TensorData::Complex64(v) => write!(out, "[{},{}]", v[i][0], v[i][1]),
            TensorData::Complex128(v) => write!(out, "[{},{}]", v[i][0], v[i][1]),
            TensorData::Bool(v) => write!(out, "{}", v[i]),
            TensorData::String(v) => write!(
                out,
                "{{\"b64\":\"{}\"}}",
                base64::engine::general_purpose::STANDARD.encode(&v[i])
            ),
        };
        return;
    }
    out.push('[');
    for k in 0..dims[0] {
        if k > 0 {
            out.push(',');
        }
        write_nested(out, data, &dims[1..], index);
    }
    out.push(']');
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_parse() {
        assert_eq!(
            "-1,1".parse::<Range>().unwrap(),
            Range {
                min: -1.0,
                max: 1.0
            }
        );
        assert!("1".parse::<Range>().is_err());
        assert!("a,b".parse::<Range>().is_err());
        for bad in ["nan,1", "0,inf", "-infinity,1", "0,1e39", "-3.5e38,0"] {
            let err = bad.parse::<Range>().unwrap_err();
            assert!(
                err.contains("is not a finite float32 number"),
                "{bad}: {err}"
            );
        }
        assert!("-3.4e38,3.4e38".parse::<Range>().is_ok());
    }

    #[test]
    fn bilinear_resizes_sample_half_pixel_centers_clamped_at_the_edges() {
        // 2x2 to 4x4: outputs sample at -0.25, 0.25, 0.75 and 1.25 (clamped to the edge pixels).
        let pixels = [0.0, 4.0, 8.0, 12.0];
        #[rustfmt::skip]
        let want = [
            0.0, 1.0, 3.0, 4.0,
            2.0, 3.0, 5.0, 6.0,
            6.0, 7.0, 9.0, 10.0,
            8.0, 9.0, 11.0, 12.0,
        ];
        assert_eq!(resize_bilinear(&pixels, (2, 2), 1, (4, 4)).unwrap(), want);
        // Channels are interpolated apart; down to one pixel, the centre's value.
        let rgb = [0.0, 10.0, 100.0, 2.0, 20.0, 200.0];
        assert_eq!(
            resize_bilinear(&rgb, (1, 2), 3, (1, 1)).unwrap(),
            [1.0, 15.0, 150.0]
        );
        // Sizes from a model's signature that no memory holds: none, rather than an abort.
        assert_eq!(resize_bilinear(&rgb, (1, 2), 3, (1 << 32, 1 << 32)), None);
        assert_eq!(resize_bilinear(&rgb, (1, 2), 3, (1 << 62, 1)), None);
    }

    /// A small JPEG: SOI, a comment, a "scan" with a stuffed 0xFF and a restart marker, EOI.
    const JPEG: &[u8] = &[
        0xFF, 0xD8, 0xFF, 0xFE, 0x00, 0x04, b'h', b'i', 0xFF, 0xDA, 0x00, 0x02, 0x12, 0xFF, 0x00,
        0x34, 0xFF, 0xD0, 0x56, 0xFF, 0xFF, 0xD9,
    ];

    #[test]
    fn a_jpeg_cut_anywhere_is_refused() {
        assert_eq!(jpeg_is_whole(JPEG), Ok(()));
        for len in 2..JPEG.len() {
            let err = jpeg_is_whole(&JPEG[..len]).unwrap_err();
            assert!(err.contains("truncated"), "{len}: {err}");
        }
        // Bytes after the end of the image are not the image's.
        assert_eq!(jpeg_is_whole(&[JPEG, b"trailer"].concat()), Ok(()));
        assert!(jpeg_is_whole(b"\x89PNG\r\n").is_ok());
        let mut bad = JPEG.to_vec();
        bad[2] = 0;
        assert!(jpeg_is_whole(&bad).unwrap_err().contains("corrupt"));
    }

    #[test]
    fn real_jpegs_are_whole() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../demo_models/inputs");
        let Ok(entries) = std::fs::read_dir(&dir) else {
            return;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.extension().is_some_and(|e| e == "jpg") {
                let bytes = std::fs::read(&path).unwrap();
                assert_eq!(jpeg_is_whole(&bytes), Ok(()), "{}", path.display());
                let cut = &bytes[..bytes.len() * 2 / 3];
                assert!(jpeg_is_whole(cut).is_err(), "{}", path.display());
            }
        }
    }

    #[test]
    fn tensors_become_instances() {
        let t = Tensor::new(vec![2, 2], TensorData::Float(vec![1.0, 0.5, -2.0, 1e-7])).unwrap();
        let body = instances_body("", &vec![("x".into(), t.clone())]).unwrap();
        assert_eq!(
            String::from_utf8(body).unwrap(),
            r#"{"instances":[[1,0.5],[-2,0.0000001]]}"#
        );
        let s = Tensor::new(vec![1], TensorData::String(vec![b"hi".to_vec()])).unwrap();
        let body = instances_body(
            "sig",
            &vec![
                ("a".into(), s),
                (
                    "b".into(),
                    Tensor::new(vec![1, 1], TensorData::Int64(vec![3])).unwrap(),
                ),
            ],
        )
        .unwrap();
        assert_eq!(
            String::from_utf8(body).unwrap(),
            r#"{"signature_name":"sig","instances":[{"a":{"b64":"aGk="},"b":[3]}]}"#
        );
    }
}
