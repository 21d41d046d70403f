//! Source selection: which sources agree on the time (RFC 5905 §11.2.1, Marzullo).
//!
//! Each candidate says "true time minus ours lies in [offset − bound, offset + bound]".
//! The largest group whose intervals share a point wins if it is a majority of the
//! candidates; a candidate whose interval misses that point is a falseticker.

/// One source's claim.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Candidate {
    pub offset: f64,
    pub bound: f64,
}

/// The outcome of selection.
#[derive(Debug, Clone, PartialEq)]
pub struct Selection {
    /// Indices (into the candidates) of the sources that agree.
    pub truechimers: Vec<usize>,
    /// The interval all of them contain.
    pub low: f64,
    pub high: f64,
}

/// Finds the largest group of candidates with a common point; `None` unless it has at
/// least `min_agree` members and more than half of all candidates.
pub fn select(candidates: &[Candidate], min_agree: usize) -> Option<Selection> {
    let n = candidates.len();
    if n == 0 {
        return None;
    }
    // Edges sorted by position; at equal positions a start comes before an end, so
    // intervals that merely touch still count as sharing a point.
    let mut edges: Vec<(f64, i32)> = candidates
        .iter()
        .filter(|c| c.offset.is_finite() && c.bound.is_finite())
        .flat_map(|c| [(c.offset - c.bound, 1), (c.offset + c.bound, -1)])
        .collect();
    edges.sort_by(|a, b| a.0.total_cmp(&b.0).then(b.1.cmp(&a.1)));
    let (mut depth, mut best, mut low, mut high) = (0i32, 0i32, 0.0, 0.0);
    for (i, &(at, step)) in edges.iter().enumerate() {
        depth += step;
        if step > 0 && depth > best {
            best = depth;
            low = at;
            // The deepest region runs to the next edge.
            high = edges.get(i + 1).map_or(at, |e| e.0);
        }
    }
    let agree = usize::try_from(best).unwrap_or(0);
    if agree < min_agree.max(1) || 2 * agree <= n {
        return None;
    }
    let truechimers = candidates
        .iter()
        .enumerate()
        .filter(|(_, c)| c.offset.is_finite() && c.bound.is_finite())
        .filter(|(_, c)| c.offset - c.bound <= high && c.offset + c.bound >= low)
        .map(|(i, _)| i)
        .collect();
    Some(Selection {
        truechimers,
        low,
        high,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(offset: f64, bound: f64) -> Candidate {
        Candidate { offset, bound }
    }

    #[test]
    fn falsetickers_are_left_out() {
        let candidates = [
            c(0.0001, 0.001),
            c(1.0, 0.001),
            c(-0.0002, 0.001),
            c(2.0, 0.001),
            c(0.0, 0.001),
        ];
        let s = select(&candidates, 1).unwrap();
        assert_eq!(s.truechimers, vec![0, 2, 4]);
        assert!(s.low <= 0.0 && s.high >= 0.0);
    }

    #[test]
    fn no_majority_no_selection() {
        assert!(select(&[c(0.0, 0.001), c(1.0, 0.001)], 1).is_none());
        assert!(select(&[c(0.0, 0.001), c(1.0, 0.001), c(2.0, 0.001)], 1).is_none());
        assert!(select(&[], 1).is_none());
    }

    #[test]
    fn min_agree_is_honoured() {
        assert!(select(&[c(0.0, 0.001)], 1).is_some());
        assert!(select(&[c(0.0, 0.001)], 2).is_none());
        let nan = [c(f64::NAN, 0.001), c(0.0, 0.001), c(0.0, 0.001)];
        assert_eq!(select(&nan, 2).unwrap().truechimers, vec![1, 2]);
    }
}
