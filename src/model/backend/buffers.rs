//! Buffers of the CPU kernels and GEMM calls: the input slice a layout spans, and outputs
//! left unzeroed where a kernel writes them whole.

use candle_core::Layout;

/// The part of a CPU tensor's storage that `layout` spans, which must be contiguous.
pub(super) fn contiguous_data<'a, T>(
    data: &'a [T],
    layout: &Layout,
    what: &str,
) -> candle_core::Result<&'a [T]> {
    match layout.contiguous_offsets() {
        Some((start, end)) => Ok(&data[start..end]),
        None => candle_core::bail!("{what}: the input must be contiguous"),
    }
}

/// A vector of `len` values that the caller overwrites whole before reading any: no pass
/// zeroing memory that is about to be written (candle's CPU backend allocates its outputs
/// the same way).
#[allow(clippy::uninit_vec)]
pub(super) fn uninit_vec<T: Copy>(len: usize) -> Vec<T> {
    let mut values = Vec::with_capacity(len);
    // SAFETY: `T: Copy` has no drop, the capacity is `len`, and every caller writes each
    // element before the vector is read.
    unsafe { values.set_len(len) };
    values
}
