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
pub(crate) fn f16_tensor(shape: &[i64], data: &[f16]) -> ort::Result<DynTensor> {
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
pub(crate) fn read_float(value: DynValue) -> ort::Result<(Vec<usize>, Vec<f32>)> {
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
