//! Disjoint sets for merge groups.

/// Union-find over `0..n` with path halving and union by size.
///
/// A group's id is its **smallest member**, so group ids depend only on which elements are joined,
/// never on the order of the unions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnionFind {
    parent: Vec<u32>,
    size: Vec<u32>,
    /// Smallest member of each root's set.
    min: Vec<u32>,
}

impl UnionFind {
    /// `n` singletons.
    pub fn new(n: usize) -> Self {
        let ids: Vec<u32> = (0..n as u32).collect();
        Self {
            parent: ids.clone(),
            size: vec![1; n],
            min: ids,
        }
    }

    /// Number of elements.
    pub fn len(&self) -> usize {
        self.parent.len()
    }

    /// Whether there are no elements.
    pub fn is_empty(&self) -> bool {
        self.parent.is_empty()
    }

    /// The root of `x`'s set.
    pub fn find(&mut self, mut x: u32) -> u32 {
        while self.parent[x as usize] != x {
            let grand = self.parent[self.parent[x as usize] as usize];
            self.parent[x as usize] = grand;
            x = grand;
        }
        x
    }

    /// Size of `x`'s set.
    pub fn set_size(&mut self, x: u32) -> usize {
        let r = self.find(x);
        self.size[r as usize] as usize
    }

    /// Joins the sets of `a` and `b`; returns whether they were separate.
    pub fn union(&mut self, a: u32, b: u32) -> bool {
        let (mut ra, mut rb) = (self.find(a), self.find(b));
        if ra == rb {
            return false;
        }
        if self.size[ra as usize] < self.size[rb as usize] {
            std::mem::swap(&mut ra, &mut rb);
        }
        self.parent[rb as usize] = ra;
        self.size[ra as usize] += self.size[rb as usize];
        self.min[ra as usize] = self.min[ra as usize].min(self.min[rb as usize]);
        true
    }

    /// The group id (smallest member) of every element.
    pub fn group_ids(&mut self) -> Vec<u32> {
        (0..self.len() as u32)
            .map(|x| {
                let r = self.find(x);
                self.min[r as usize]
            })
            .collect()
    }

    /// Rebuilds the sets from group ids (as returned by [`UnionFind::group_ids`]).
    pub fn from_group_ids(ids: &[u32]) -> Option<Self> {
        let mut uf = Self::new(ids.len());
        for (x, &g) in ids.iter().enumerate() {
            if g as usize >= ids.len() || ids[g as usize] != g || g as usize > x {
                return None; // a group id must be the group's smallest member, itself in the group
            }
            uf.union(x as u32, g);
        }
        Some(uf)
    }
}
