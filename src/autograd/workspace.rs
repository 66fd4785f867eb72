//! Buffers that outlive a training step, so big scratch arrays are reused
//! instead of allocated (and zeroed) at every step.

use ndarray::Array2;

/// A pool of `f32` buffers. An op takes one of at least the length it needs,
/// uses it, and it comes back to the pool when the tape ends
/// ([`crate::autograd::Tape::into_workspace`]). A trainer keeps one pool for
/// the whole run, so at steady state no step allocates its im2col buffers.
#[derive(Debug, Default)]
pub struct Workspace {
    free: Vec<Vec<f32>>,
}

/// The most buffers the pool keeps. A step takes a few dozen; the bound
/// only stops a caller that gives back more than it takes (arrays made
/// elsewhere) from growing the pool, and every lookup, without limit.
const MAX_BUFFERS: usize = 256;

impl Workspace {
    /// An empty pool.
    pub fn new() -> Self {
        Self::default()
    }

    /// A `rows × cols` array whose values are unspecified (left over from an
    /// earlier use): the caller must write every value it reads.
    pub fn array(&mut self, rows: usize, cols: usize) -> Array2<f32> {
        Array2::from_shape_vec((rows, cols), self.vec(rows * cols)).expect("rows · cols values")
    }

    /// A vector of `len` unspecified values, like [`Workspace::array`].
    pub fn vec(&mut self, len: usize) -> Vec<f32> {
        // The smallest free buffer that is big enough, else a new one.
        let best = self
            .free
            .iter()
            .enumerate()
            .filter(|(_, b)| b.capacity() >= len)
            .min_by_key(|(_, b)| b.capacity())
            .map(|(i, _)| i);
        let mut buffer = match best {
            Some(i) => self.free.swap_remove(i),
            None => Vec::with_capacity(len),
        };
        buffer.resize(len, 0.0);
        buffer
    }

    /// Returns an array's buffer to the pool (it is dropped if the pool is full).
    pub fn give(&mut self, array: Array2<f32>) {
        self.give_vec(array.into_raw_vec_and_offset().0);
    }

    /// Returns a vector's buffer to the pool (it is dropped if the pool is full).
    pub fn give_vec(&mut self, buffer: Vec<f32>) {
        if buffer.capacity() > 0 && self.free.len() < MAX_BUFFERS {
            self.free.push(buffer);
        }
    }

    /// Buffers waiting in the pool.
    pub fn len(&self) -> usize {
        self.free.len()
    }

    /// True if the pool holds no buffer.
    pub fn is_empty(&self) -> bool {
        self.free.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buffers_are_reused_by_size() {
        let mut pool = Workspace::new();
        let a = pool.array(10, 10);
        let pointer = a.as_ptr();
        pool.give(a);
        let b = pool.array(5, 20);
        assert_eq!(
            b.as_ptr(),
            pointer,
            "the same allocation serves an array of the same length"
        );
        assert!(pool.is_empty());
        pool.give(b);
        let bigger = pool.array(20, 20);
        assert_eq!(bigger.dim(), (20, 20));
        assert_eq!(
            pool.len(),
            1,
            "too small to reuse, the old buffer stays in the pool"
        );
    }

    #[test]
    fn the_pool_is_bounded() {
        let mut pool = Workspace::new();
        for _ in 0..MAX_BUFFERS + 10 {
            pool.give(Array2::zeros((2, 2)));
        }
        assert_eq!(pool.len(), MAX_BUFFERS);
    }
}
