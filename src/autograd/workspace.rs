//! Buffers that outlive a training step, so big scratch arrays are reused
//! instead of allocated (and zeroed) at every step.

use ndarray::Array2;

use crate::aligned;

use super::tape::{Gradients, Node};

/// Pools of buffers. An op takes one of at least the length it needs, uses
/// it, and it comes back to the pool when the tape ends
/// ([`crate::autograd::Tape::into_workspace`]). A trainer keeps one workspace
/// for the whole run, so at steady state a step allocates nothing: values
/// (activations, gradients, im2col matrices), indices (max pooling's argmax),
/// flags (the im2col rows a sparse convolution reads) and the tape's own lists
/// all come back from the last step.
#[derive(Debug, Default)]
pub struct Workspace {
    values: Pool<f32>,
    indices: Pool<u32>,
    flags: Pool<bool>,
    /// Fill every value buffer handed out with NaN (see [`Workspace::poisoned`]).
    poison: bool,
    /// The bookkeeping lists of a tape and its backward pass, empty, kept
    /// for their capacity.
    pub(crate) lists: TapeLists,
}

/// See [`Workspace::lists`].
#[derive(Debug, Default)]
pub(crate) struct TapeLists {
    pub(crate) nodes: Vec<Node>,
    pub(crate) node_grads: Vec<Option<Array2<f32>>>,
    pub(crate) gradients: Gradients,
}

/// The most buffers a pool keeps. A step takes a few dozen; the bound
/// only stops a caller that gives back more than it takes (arrays made
/// elsewhere) from growing the pool, and every lookup, without limit.
const MAX_BUFFERS: usize = 256;

/// Free buffers of one element type.
#[derive(Debug)]
struct Pool<T> {
    free: Vec<Vec<T>>,
}

impl<T> Default for Pool<T> {
    fn default() -> Self {
        Pool { free: Vec::new() }
    }
}

impl<T: Copy + Default> Pool<T> {
    /// A buffer of `len` unspecified values: the smallest free one that is
    /// big enough, else a new one.
    fn take(&mut self, len: usize) -> Vec<T> {
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
        buffer.resize(len, T::default());
        buffer
    }

    /// Keeps `buffer` for reuse (drops it if the pool is full).
    fn give(&mut self, buffer: Vec<T>) {
        if buffer.capacity() > 0 && self.free.len() < MAX_BUFFERS {
            self.free.push(buffer);
        }
    }
}

impl Workspace {
    /// An empty workspace.
    pub fn new() -> Self {
        Self::default()
    }

    /// A workspace that fills every value buffer it hands out with NaN, for
    /// tests: an op that reads a value it did not write (the contents of a
    /// pooled buffer are left over from its last use) then produces NaN
    /// instead of a silently wrong result.
    pub fn poisoned() -> Self {
        Workspace {
            poison: true,
            ..Self::default()
        }
    }

    /// A `rows × cols` array whose values are unspecified (left over from an
    /// earlier use): the caller must write every value it reads.
    /// Its first value starts a cache line ([`crate::aligned`]).
    pub fn array(&mut self, rows: usize, cols: usize) -> Array2<f32> {
        let mut array =
            aligned::array_in(self.values.take(rows * cols + aligned::SLACK), rows, cols);
        if self.poison {
            array.fill(f32::NAN);
        }
        array
    }

    /// A vector of `len` unspecified values, like [`Workspace::array`].
    pub fn vec(&mut self, len: usize) -> Vec<f32> {
        let mut buffer = self.values.take(len);
        if self.poison {
            buffer.fill(f32::NAN);
        }
        buffer
    }

    /// Returns an array's buffer to the pool (it is dropped if the pool is full).
    pub fn give(&mut self, array: Array2<f32>) {
        self.give_vec(array.into_raw_vec_and_offset().0);
    }

    /// Returns a vector's buffer to the pool (it is dropped if the pool is full).
    pub fn give_vec(&mut self, buffer: Vec<f32>) {
        self.values.give(buffer);
    }

    /// `len` unspecified indices.
    pub(crate) fn indices(&mut self, len: usize) -> Vec<u32> {
        self.indices.take(len)
    }

    /// Returns an index buffer.
    pub(crate) fn give_indices(&mut self, buffer: Vec<u32>) {
        self.indices.give(buffer);
    }

    /// `len` unspecified flags.
    pub(crate) fn flags(&mut self, len: usize) -> Vec<bool> {
        self.flags.take(len)
    }

    /// Returns a flag buffer.
    pub(crate) fn give_flags(&mut self, buffer: Vec<bool>) {
        self.flags.give(buffer);
    }

    /// Value buffers waiting in the pool.
    pub fn len(&self) -> usize {
        self.values.free.len()
    }

    /// True if the pool holds no value buffer.
    pub fn is_empty(&self) -> bool {
        self.values.free.is_empty()
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
