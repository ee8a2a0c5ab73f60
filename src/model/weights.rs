//! A checkpoint's tensors, read from their safetensors files one at a time and converted to
//! the compute dtype in slices. Loading thus holds the converted weights and one slice: a
//! memory map would count every page of the file it touched in the process's memory until it
//! is dropped, half again the f32 weights of a bf16 checkpoint at the peak of the load.

use std::collections::HashMap;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use candle_core::{DType, Device, Shape, Tensor};
use half::{bf16, f16};
use safetensors::tensor::Metadata;

/// Bytes of a file read and converted at once.
const SLICE_BYTES: usize = 8 << 20;

/// Where a tensor's bytes lie.
struct Located {
    file: Arc<PathBuf>,
    dtype: DType,
    shape: Vec<usize>,
    /// Offset of its first byte in the file.
    start: u64,
}

impl Located {
    fn elements(&self) -> usize {
        self.shape.iter().product()
    }
}

/// Every tensor of a checkpoint's safetensors files (one, or the shards of an index).
pub struct SafetensorsFiles {
    tensors: HashMap<String, Located>,
}

fn error(path: &Path, what: impl std::fmt::Display) -> candle_core::Error {
    candle_core::Error::Msg(format!("{}: {what}", path.display()))
}

impl SafetensorsFiles {
    /// Reads the headers; the tensors stay on disk until asked for.
    pub fn open(paths: &[PathBuf]) -> candle_core::Result<Self> {
        let mut tensors = HashMap::new();
        for path in paths {
            let file = Arc::new(path.clone());
            let mut reader = File::open(path).map_err(|err| error(path, err))?;
            let file_len = reader.metadata().map_err(|err| error(path, err))?.len();
            let mut length = [0u8; 8];
            reader
                .read_exact(&mut length)
                .map_err(|err| error(path, format!("no safetensors header: {err}")))?;
            let header_len = u64::from_le_bytes(length);
            if header_len > file_len.saturating_sub(8) {
                return Err(error(
                    path,
                    "the safetensors header runs past the file's end",
                ));
            }
            let mut header = vec![0u8; header_len as usize];
            reader
                .read_exact(&mut header)
                .map_err(|err| error(path, err))?;
            let metadata: Metadata = serde_json::from_slice(&header)
                .map_err(|err| error(path, format!("bad safetensors header: {err}")))?;
            let data_start = 8 + header_len;
            for (name, info) in metadata.tensors() {
                let dtype = DType::try_from(info.dtype).map_err(|err| error(path, err))?;
                let (begin, end) = info.data_offsets;
                let elements: usize = info.shape.iter().product();
                if end - begin != elements * dtype.size_in_bytes()
                    || data_start + end as u64 > file_len
                {
                    return Err(error(
                        path,
                        format!("tensor `{name}` lies outside the file"),
                    ));
                }
                let located = Located {
                    file: file.clone(),
                    dtype,
                    shape: info.shape.clone(),
                    start: data_start + begin as u64,
                };
                tensors.insert(name, located);
            }
        }
        Ok(SafetensorsFiles { tensors })
    }

    fn locate(&self, name: &str) -> candle_core::Result<&Located> {
        self.tensors
            .get(name)
            .ok_or_else(|| candle_core::Error::CannotFindTensor { path: name.into() }.bt())
    }

    /// A whole tensor, as `dtype` on `device`.
    pub fn read(&self, name: &str, dtype: DType, device: &Device) -> candle_core::Result<Tensor> {
        let located = self.locate(name)?;
        let bytes = located.elements() * located.dtype.size_in_bytes();
        let tensor = read_converted(located, located.start, bytes, dtype)?;
        tensor.reshape(located.shape.as_slice())?.to_device(device)
    }

    /// Row `row` of a matrix, in f32 on the CPU, without reading the rest.
    pub fn read_row(&self, name: &str, row: usize) -> candle_core::Result<Tensor> {
        let located = self.locate(name)?;
        let (rows, width) = match located.shape[..] {
            [rows, width] => (rows, width),
            ref other => candle_core::bail!("`{name}` has shape {other:?}, expected a matrix"),
        };
        if row >= rows {
            candle_core::bail!("`{name}` has {rows} rows, row {row} is past them");
        }
        let row_bytes = width * located.dtype.size_in_bytes();
        let start = located.start + (row * row_bytes) as u64;
        read_converted(located, start, row_bytes, DType::F32)
    }
}

/// `bytes` bytes of `located`'s file from `start`, converted slice by slice to `dtype`; a
/// flat tensor on the CPU.
fn read_converted(
    located: &Located,
    start: u64,
    bytes: usize,
    dtype: DType,
) -> candle_core::Result<Tensor> {
    let path = located.file.as_path();
    let mut file = File::open(path).map_err(|err| error(path, err))?;
    file.seek(SeekFrom::Start(start))
        .map_err(|err| error(path, err))?;
    let size = located.dtype.size_in_bytes();
    let elements = bytes / size;
    let mut slice = vec![0u8; SLICE_BYTES.min(bytes)];
    let mut converted = Converted::with_capacity(dtype, elements)?;
    let mut left = bytes;
    while left > 0 {
        let chunk = &mut slice[..left.min(SLICE_BYTES)];
        file.read_exact(chunk).map_err(|err| error(path, err))?;
        converted.extend(located.dtype, chunk)?;
        left -= chunk.len();
    }
    converted.into_tensor(elements)
}

/// The elements converted so far, in the target dtype.
enum Converted {
    F32(Vec<f32>),
    Bf16(Vec<bf16>),
    F16(Vec<f16>),
}

impl Converted {
    fn with_capacity(dtype: DType, elements: usize) -> candle_core::Result<Self> {
        Ok(match dtype {
            DType::F32 => Converted::F32(Vec::with_capacity(elements)),
            DType::BF16 => Converted::Bf16(Vec::with_capacity(elements)),
            DType::F16 => Converted::F16(Vec::with_capacity(elements)),
            other => candle_core::bail!("weights cannot be computed in {other:?}"),
        })
    }

    /// Appends the elements of `chunk`, little-endian `source` values.
    fn extend(&mut self, source: DType, chunk: &[u8]) -> candle_core::Result<()> {
        match (self, source) {
            // Same dtype: the bits as they are.
            (Converted::Bf16(out), DType::BF16) => out.extend(
                chunk
                    .chunks_exact(2)
                    .map(|b| bf16::from_le_bytes([b[0], b[1]])),
            ),
            (Converted::F16(out), DType::F16) => out.extend(
                chunk
                    .chunks_exact(2)
                    .map(|b| f16::from_le_bytes([b[0], b[1]])),
            ),
            (Converted::F32(out), _) => decode(source, chunk, |v| out.push(v))?,
            (Converted::Bf16(out), _) => decode(source, chunk, |v| out.push(bf16::from_f32(v)))?,
            (Converted::F16(out), _) => decode(source, chunk, |v| out.push(f16::from_f32(v)))?,
        }
        Ok(())
    }

    fn into_tensor(self, elements: usize) -> candle_core::Result<Tensor> {
        match self {
            Converted::F32(values) => Tensor::from_vec(values, elements, &Device::Cpu),
            Converted::Bf16(values) => Tensor::from_vec(values, elements, &Device::Cpu),
            Converted::F16(values) => Tensor::from_vec(values, elements, &Device::Cpu),
        }
    }
}

/// Each little-endian `source` value of `chunk`, as f32.
fn decode(source: DType, chunk: &[u8], mut push: impl FnMut(f32)) -> candle_core::Result<()> {
    match source {
        DType::F32 => chunk
            .chunks_exact(4)
            .for_each(|b| push(f32::from_le_bytes([b[0], b[1], b[2], b[3]]))),
        DType::BF16 => chunk
            .chunks_exact(2)
            .for_each(|b| push(bf16::from_le_bytes([b[0], b[1]]).to_f32())),
        DType::F16 => chunk
            .chunks_exact(2)
            .for_each(|b| push(f16::from_le_bytes([b[0], b[1]]).to_f32())),
        other => candle_core::bail!("checkpoint tensors in {other:?} are not supported"),
    }
    Ok(())
}

impl candle_nn::var_builder::SimpleBackend for SafetensorsFiles {
    fn get(
        &self,
        shape: Shape,
        name: &str,
        _: candle_nn::Init,
        dtype: DType,
        device: &Device,
    ) -> candle_core::Result<Tensor> {
        let found = &self.locate(name)?.shape;
        if found.as_slice() != shape.dims() {
            return Err(candle_core::Error::UnexpectedShape {
                msg: format!("shape mismatch for {name}"),
                expected: shape,
                got: found.as_slice().into(),
            }
            .bt());
        }
        self.read(name, dtype, device)
    }

    fn get_unchecked(
        &self,
        name: &str,
        dtype: DType,
        device: &Device,
    ) -> candle_core::Result<Tensor> {
        self.read(name, dtype, device)
    }

    fn contains_tensor(&self, name: &str) -> bool {
        self.tensors.contains_key(name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_as_candle_does_in_every_dtype_and_slice_size() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("w.safetensors");
        // Over one slice, so that conversion crosses slice boundaries.
        let count = (SLICE_BYTES / 2 / 3 + 1) * 3;
        let values: Vec<f32> = (0..count)
            .map(|i| (i as f32 * 0.37).sin() * 100.0)
            .collect();
        let base = Tensor::from_vec(values, (count / 3, 3), &Device::Cpu).unwrap();
        let saved: HashMap<String, Tensor> = [
            ("f32".to_owned(), base.clone()),
            ("bf16".to_owned(), base.to_dtype(DType::BF16).unwrap()),
            ("f16".to_owned(), base.to_dtype(DType::F16).unwrap()),
        ]
        .into();
        candle_core::safetensors::save(&saved, &path).unwrap();
        let files = SafetensorsFiles::open(std::slice::from_ref(&path)).unwrap();
        for (name, tensor) in &saved {
            for dtype in [DType::F32, DType::BF16, DType::F16] {
                let read = files.read(name, dtype, &Device::Cpu).unwrap();
                let expected = tensor.to_dtype(dtype).unwrap();
                assert_eq!(read.dims(), expected.dims());
                let (a, b) = (
                    read.to_dtype(DType::F32).unwrap().flatten_all().unwrap(),
                    expected
                        .to_dtype(DType::F32)
                        .unwrap()
                        .flatten_all()
                        .unwrap(),
                );
                assert_eq!(
                    a.to_vec1::<f32>().unwrap(),
                    b.to_vec1::<f32>().unwrap(),
                    "{name} as {dtype:?}"
                );
            }
        }
        let row = files.read_row("bf16", 5).unwrap();
        let expected = saved["bf16"].get(5).unwrap().to_dtype(DType::F32).unwrap();
        assert_eq!(
            row.to_vec1::<f32>().unwrap(),
            expected.to_vec1::<f32>().unwrap()
        );
        assert!(files.read_row("bf16", count).is_err());
    }

    #[test]
    fn a_truncated_file_is_an_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("w.safetensors");
        let tensor = Tensor::zeros((4, 4), DType::F32, &Device::Cpu).unwrap();
        candle_core::safetensors::save(&HashMap::from([("t".to_owned(), tensor)]), &path).unwrap();
        let bytes = std::fs::read(&path).unwrap();
        std::fs::write(&path, &bytes[..bytes.len() - 8]).unwrap();
        let err = SafetensorsFiles::open(std::slice::from_ref(&path))
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("w.safetensors"), "{err}");
    }
}
