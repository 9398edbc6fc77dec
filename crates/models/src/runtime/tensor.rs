//! Tensor plumbing shared by the model wrappers: float16 tensors in and float32/float16 outputs out.
//!
//! `ort` is built without its `half` feature, so f16 tensors are written and
//! read through their raw CPU buffers here, and only here.

use half::f16;
use ort::memory::Allocator;
use ort::value::{DynTensor, DynTensorValueType, DynValue, TensorElementType};

/// A float16 tensor on the CPU holding `data`.
///
/// `ort` is built without its `half` feature, so f16 tensors cannot be made
/// from typed arrays; the tensor is allocated with the right element type
/// and its bytes written directly.
pub fn f16_tensor(shape: &[i64], data: &[f16]) -> ort::Result<DynTensor> {
    let mut tensor = DynTensor::new(
        &Allocator::default(),
        TensorElementType::Float16,
        shape.to_vec(),
    )?;
    if !data.is_empty() {
        let ptr = tensor.data_ptr_mut().cast::<u16>();
        assert!(!ptr.is_null(), "invariant: a non-empty tensor has a buffer");
        // SAFETY: the default allocator is the CPU allocator, so the buffer is
        // host memory; ORT allocated `shape.product()` = `data.len()` f16
        // elements (2 bytes each, suitably aligned), and nothing else refers
        // to the new tensor while we write.
        let buf = unsafe { std::slice::from_raw_parts_mut(ptr, data.len()) };
        for (dst, v) in buf.iter_mut().zip(data) {
            *dst = v.to_bits();
        }
    }
    Ok(tensor)
}

/// The shape and `f32` data of a float32 or float16 output.
pub fn read_float(value: DynValue) -> ort::Result<(Vec<usize>, Vec<f32>)> {
    let tensor = value.downcast::<DynTensorValueType>()?;
    let shape: Vec<usize> = tensor
        .shape()
        .iter()
        .map(|d| (*d).max(0) as usize)
        .collect();
    match tensor.data_type() {
        TensorElementType::Float16 => {
            let n: usize = shape.iter().product();
            if n == 0 {
                return Ok((shape, vec![]));
            }
            if !tensor.memory_info().is_cpu_accessible() {
                return Err(ort::Error::new("the f16 output is not in host memory"));
            }
            let ptr = tensor.data_ptr().cast::<u16>();
            assert!(!ptr.is_null(), "invariant: a non-empty tensor has a buffer");
            // SAFETY: the tensor is a CPU-accessible float16 tensor of `n`
            // elements (checked above), so its buffer holds `n` properly
            // aligned 2-byte values, alive as long as `tensor`.
            let bits = unsafe { std::slice::from_raw_parts(ptr, n) };
            Ok((
                shape,
                bits.iter().map(|b| f16::from_bits(*b).to_f32()).collect(),
            ))
        }
        _ => {
            let (_, data) = tensor.try_extract_tensor::<f32>()?;
            Ok((shape, data.to_vec()))
        }
    }
}

/// A new float16 tensor on the CPU of `shape`, contents unset (fill it
/// with [`fill_f16`]).
pub fn new_f16_tensor(shape: &[i64]) -> ort::Result<DynTensor> {
    DynTensor::new(
        &Allocator::default(),
        TensorElementType::Float16,
        shape.to_vec(),
    )
}

/// Write `values`, rounded to f16, into a float16 CPU tensor made by
/// [`new_f16_tensor`] (or [`f16_tensor`]); `values` must yield exactly its
/// element count.
pub fn fill_f16(tensor: &mut DynTensor, values: impl ExactSizeIterator<Item = f32>) {
    let n: usize = tensor
        .shape()
        .iter()
        .map(|d| (*d).max(0) as usize)
        .product();
    assert_eq!(values.len(), n, "invariant: one value per element");
    assert_eq!(tensor.data_type(), &TensorElementType::Float16);
    if n == 0 {
        return;
    }
    let ptr = tensor.data_ptr_mut().cast::<u16>();
    assert!(!ptr.is_null(), "invariant: a non-empty tensor has a buffer");
    // SAFETY: as in `f16_tensor`: a CPU float16 tensor of `n` elements made
    // by the default (CPU) allocator, so its buffer holds `n` aligned 2-byte
    // values; `&mut` guarantees nothing else reads it while we write.
    let buf = unsafe { std::slice::from_raw_parts_mut(ptr, n) };
    for (dst, v) in buf.iter_mut().zip(values) {
        *dst = f16::from_f32(v).to_bits();
    }
}

/// The elements of a float32 or float16 output, borrowed from it.
pub enum FloatSlice<'a> {
    /// float32 elements.
    F32(&'a [f32]),
    /// float16 elements, as their bits.
    F16(&'a [u16]),
}

impl FloatSlice<'_> {
    /// Number of elements.
    pub fn len(&self) -> usize {
        match self {
            FloatSlice::F32(v) => v.len(),
            FloatSlice::F16(v) => v.len(),
        }
    }

    /// Whether there are no elements.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Element `i` as f32.
    #[inline]
    pub fn get(&self, i: usize) -> f32 {
        match self {
            FloatSlice::F32(v) => v[i],
            FloatSlice::F16(v) => f16::from_bits(v[i]).to_f32(),
        }
    }

    /// Copy every element, as f32, into `out` (of the same length).
    pub fn copy_to(&self, out: &mut [f32]) {
        assert_eq!(out.len(), self.len(), "invariant: equal lengths");
        match self {
            FloatSlice::F32(v) => out.copy_from_slice(v),
            FloatSlice::F16(v) => {
                for (o, b) in out.iter_mut().zip(v.iter()) {
                    *o = f16::from_bits(*b).to_f32();
                }
            }
        }
    }
}

/// The shape and elements of a float32 or float16 output, without copying
/// them (see [`read_float`] for an owned copy).
pub fn float_view(value: &DynValue) -> ort::Result<(Vec<usize>, FloatSlice<'_>)> {
    if !matches!(value.dtype(), ort::value::ValueType::Tensor { .. }) {
        return Err(ort::Error::new("the output is not a tensor"));
    }
    let shape: Vec<usize> = value.shape().iter().map(|d| (*d).max(0) as usize).collect();
    let n: usize = shape.iter().product();
    match value.data_type() {
        TensorElementType::Float16 => {
            if n == 0 {
                return Ok((shape, FloatSlice::F16(&[])));
            }
            let tensor = value.view().downcast::<DynTensorValueType>()?;
            if !tensor.memory_info().is_cpu_accessible() {
                return Err(ort::Error::new("the f16 output is not in host memory"));
            }
            let ptr = tensor.data_ptr().cast::<u16>();
            assert!(!ptr.is_null(), "invariant: a non-empty tensor has a buffer");
            // SAFETY: as in `read_float`: a CPU-accessible float16 tensor of
            // `n` elements; the buffer belongs to `value` (`tensor` is only a
            // view of it), so it lives, unchanged, as long as that borrow.
            let bits = unsafe { std::slice::from_raw_parts(ptr, n) };
            Ok((shape, FloatSlice::F16(bits)))
        }
        _ => {
            let (_, data) = value.try_extract_tensor::<f32>()?;
            Ok((shape, FloatSlice::F32(data)))
        }
    }
}
