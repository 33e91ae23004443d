//! Sums of partial results from parallel workers in a fixed order.
//!
//! Floating-point addition is not associative: adding the workers' partial
//! sums in the order they finish makes the result depend on thread timing,
//! and two runs of the same experiment would differ in the last bits (which
//! also breaks exact resumption). [`Partials`] keeps each worker's part
//! under the index of the work it covered and adds them in index order.

use std::sync::Mutex;

/// Partial sums keyed by the first index of the work they cover.
#[derive(Default)]
pub(crate) struct Partials {
    parts: Mutex<Vec<(usize, Vec<f32>)>>,
}

impl Partials {
    /// Records the part of the work starting at `key`.
    pub(crate) fn push(&self, key: usize, part: Vec<f32>) {
        self.parts.lock().unwrap_or_else(|e| e.into_inner()).push((key, part));
    }

    /// The parts summed in key order into `total` (of the parts' length).
    pub(crate) fn sum_into(self, total: &mut [f32]) {
        let mut parts = self.parts.into_inner().unwrap_or_else(|e| e.into_inner());
        parts.sort_by_key(|(k, _)| *k);
        for (_, p) in parts {
            total.iter_mut().zip(&p).for_each(|(t, v)| *t += v);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parts_are_added_in_key_order_whatever_the_push_order() {
        // 1e8 + 1 - 1e8 depends on the order in f32.
        let a = Partials::default();
        a.push(2, vec![-1e8]);
        a.push(0, vec![1e8]);
        a.push(1, vec![1.0]);
        let b = Partials::default();
        b.push(1, vec![1.0]);
        b.push(0, vec![1e8]);
        b.push(2, vec![-1e8]);
        let (mut ta, mut tb) = ([0f32], [0f32]);
        a.sum_into(&mut ta);
        b.sum_into(&mut tb);
        assert_eq!(ta, tb);
        assert_eq!(ta, [0.0]); // (1e8 + 1) rounds to 1e8 in f32
    }
}
