//! Exact SHAP values of a tree ensemble for one row: path-dependent TreeSHAP (Lundberg, Erion
//! and Lee, "Consistent individualized feature attribution for tree ensembles", 2018,
//! algorithm 2), as XGBoost's `pred_contribs` computes it, so that the two agree to float
//! rounding: a missing value follows the split's default branch, and the base value is the
//! base margin plus each tree's cover-weighted mean leaf.
//!
//! The trees come from `tabular.trees.json` (format `medchain-xgboost-trees` 1, written by
//! `models/pipeline/explain_tabular.py`).
//!
//! A leaf's share of the contributions depends on the row only through which of its path's
//! features the row agrees with, so for shallow trees each leaf's contributions are computed
//! at load for every such pattern (as Fast TreeSHAP v2 does: Yang, "Fast TreeSHAP", 2021) and a
//! row is explained by evaluating each split once and adding, per leaf, its pattern's entries.
//! A tree whose paths carry more than [`MAX_TABLE_FEATURES`] features, or an ensemble whose
//! tables would pass [`MAX_TABLE_BYTES`], is explained by the recursion instead.

use serde::Deserialize;

/// The file's format name and version this reads.
pub const FORMAT: &str = "medchain-xgboost-trees";
pub const FORMAT_VERSION: u32 = 1;

/// A tree ensemble, checked and laid out for [`Ensemble::shap`].
#[derive(Debug, Clone)]
pub struct Ensemble {
    num_features: usize,
    /// The base margin plus each tree's expected value: the margin with no feature known.
    base_value: f64,
    trees: Vec<Tree>,
    /// The deepest tree's depth (sizes the path buffer).
    max_depth: usize,
    /// Each tree's leaf tables, when every tree is shallow enough.
    tables: Option<Vec<Vec<LeafTable>>>,
    /// The most nodes a tree has (sizes the split buffer).
    max_nodes: usize,
}

/// The most distinct features a leaf's path may carry for its table (2^n patterns of n).
pub const MAX_TABLE_FEATURES: usize = 8;
/// The most the tables of one ensemble may hold.
pub const MAX_TABLE_BYTES: usize = 32 << 20;

/// One leaf's contributions for each pattern of agreement with its path's features.
#[derive(Debug, Clone)]
struct LeafTable {
    /// The distinct features on the path, in path order.
    features: Vec<u32>,
    /// The path's splits: the node, whether the path goes left there, and which of
    /// `features` it splits on.
    splits: Vec<(u32, bool, u8)>,
    /// `(1 << features.len()) × features.len()` entries: for pattern `p` (bit `j` set when the
    /// row agrees with every split on feature `j`), feature `j`'s contribution at `p·n + j`.
    values: Vec<f64>,
}

#[derive(Debug, Clone)]
struct Tree {
    nodes: Vec<Node>,
}

#[derive(Debug, Clone, Copy)]
struct Node {
    /// Children; `u32::MAX` for a leaf.
    left: u32,
    right: u32,
    feature: u32,
    /// A value below it goes left (compared in float32, as the model does).
    threshold: f32,
    default_left: bool,
    /// The leaf's value (leaves only).
    value: f64,
    /// Training rows' hessian sum that reached the node.
    cover: f64,
}

const LEAF: u32 = u32::MAX;

impl Node {
    fn is_leaf(&self) -> bool {
        self.left == LEAF
    }
}

/// The file as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    format: String,
    format_version: u32,
    objective: String,
    link: String,
    base_margin: f64,
    num_features: usize,
    trees: Vec<FileTree>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileTree {
    left: Vec<i64>,
    right: Vec<i64>,
    feature: Vec<u32>,
    threshold: Vec<f32>,
    default_left: Vec<bool>,
    value: Vec<f64>,
    cover: Vec<f64>,
}

impl Ensemble {
    /// Reads and checks a trees file: every child exists and lies below its parent (so the
    /// trees have no cycles), every split names a feature of the model, covers are positive.
    pub fn from_json(bytes: &[u8], num_features: usize) -> Result<Self, String> {
        let file: File =
            serde_json::from_slice(bytes).map_err(|e| format!("not a trees file: {e}"))?;
        if file.format != FORMAT || file.format_version != FORMAT_VERSION {
            return Err(format!(
                "format `{}` {} is not `{FORMAT}` {FORMAT_VERSION}",
                file.format, file.format_version
            ));
        }
        if file.objective != "binary:logistic" || file.link != "logit" {
            return Err(format!(
                "objective `{}` with link `{}`: only binary:logistic with the logit link is explained",
                file.objective, file.link
            ));
        }
        if file.num_features != num_features {
            return Err(format!(
                "the trees take {} features, the card {num_features}",
                file.num_features
            ));
        }
        if file.trees.is_empty() {
            return Err("no trees".into());
        }
        let mut trees = Vec::with_capacity(file.trees.len());
        let mut max_depth = 0;
        for (t, ft) in file.trees.into_iter().enumerate() {
            let (tree, depth) =
                Tree::checked(ft, num_features).map_err(|e| format!("tree {t}: {e}"))?;
            max_depth = max_depth.max(depth);
            trees.push(tree);
        }
        let base_value = file.base_margin + trees.iter().map(|t| t.expected_value(0)).sum::<f64>();
        let tables = leaf_tables(&trees);
        let max_nodes = trees.iter().map(|t| t.nodes.len()).max().unwrap_or(0);
        Ok(Self {
            num_features,
            base_value,
            trees,
            max_depth,
            tables,
            max_nodes,
        })
    }

    /// Whether rows are explained from the precomputed leaf tables.
    pub fn tabled(&self) -> bool {
        self.tables.is_some()
    }

    /// The bytes the trees hold.
    pub fn resident_bytes(&self) -> usize {
        std::mem::size_of::<Self>()
            + self
                .trees
                .iter()
                .map(|t| {
                    std::mem::size_of::<Tree>() + t.nodes.capacity() * std::mem::size_of::<Node>()
                })
                .sum::<usize>()
            + self.tables.as_ref().map_or(0, |trees| {
                trees
                    .iter()
                    .flatten()
                    .map(LeafTable::resident_bytes)
                    .sum::<usize>()
            })
    }

    /// The margin with no feature known (what the contributions start from).
    pub fn base_value(&self) -> f64 {
        self.base_value
    }

    /// Each feature's contribution to `row`'s margin (NaN: missing); `base_value()` plus their
    /// sum is the margin the model gives `row`.
    pub fn shap(&self, row: &[f32]) -> Vec<f64> {
        assert_eq!(
            row.len(),
            self.num_features,
            "a row of the model's features"
        );
        let Some(tables) = &self.tables else {
            return self.shap_recursive(row);
        };
        let mut phi = vec![0.0; self.num_features];
        let mut left = vec![false; self.max_nodes];
        for (tree, leaves) in self.trees.iter().zip(tables) {
            for (goes_left, node) in left.iter_mut().zip(&tree.nodes) {
                *goes_left = !node.is_leaf() && Tree::next(node, row) == node.left;
            }
            for leaf in leaves {
                let n = leaf.features.len();
                let mut pattern = (1usize << n) - 1;
                for &(node, path_left, j) in &leaf.splits {
                    if left[node as usize] != path_left {
                        pattern &= !(1 << j);
                    }
                }
                let entries = &leaf.values[pattern * n..(pattern + 1) * n];
                for (&f, &v) in leaf.features.iter().zip(entries) {
                    phi[f as usize] += v;
                }
            }
        }
        phi
    }

    /// [`Ensemble::shap`] by the recursion (algorithm 2 itself), whatever the trees' depth.
    pub fn shap_recursive(&self, row: &[f32]) -> Vec<f64> {
        assert_eq!(
            row.len(),
            self.num_features,
            "a row of the model's features"
        );
        let mut phi = vec![0.0; self.num_features];
        let d = self.max_depth + 2;
        let mut path = vec![PathElement::default(); d * (d + 1) / 2];
        for tree in &self.trees {
            tree.shap(row, &mut phi, &mut path, 0, 0, 0, 1.0, 1.0, ROOT);
        }
        phi
    }

    /// The margin the trees give `row` (their leaves' sum), computed apart from the
    /// contributions: what the tests hold `base_value()` plus their sum to.
    #[cfg(test)]
    fn margin(&self, row: &[f32]) -> f64 {
        let base = self.base_value - self.trees.iter().map(|t| t.expected_value(0)).sum::<f64>();
        base + self.trees.iter().map(|t| t.leaf_value(row)).sum::<f64>()
    }
}

/// Every tree's leaf tables, or none when a path carries too many features or the tables
/// would hold too much.
fn leaf_tables(trees: &[Tree]) -> Option<Vec<Vec<LeafTable>>> {
    let mut bytes = 0;
    let mut out = Vec::with_capacity(trees.len());
    for tree in trees {
        let mut leaves = Vec::new();
        let mut splits = Vec::new();
        tree.tabulate(0, &mut splits, &mut leaves, &mut bytes)?;
        if bytes > MAX_TABLE_BYTES {
            return None;
        }
        out.push(leaves);
    }
    Some(out)
}

impl LeafTable {
    /// The table of the leaf `value` reached by `path` (each split: node, feature, whether it
    /// goes left, the share of the node's cover that goes that way).
    fn new(path: &[(u32, u32, bool, f64)], value: f64) -> Option<Self> {
        let mut features: Vec<u32> = Vec::new();
        let mut zero: Vec<f64> = Vec::new();
        let mut splits = Vec::with_capacity(path.len());
        for &(node, feature, left, share) in path {
            let j = match features.iter().position(|&f| f == feature) {
                Some(j) => {
                    zero[j] *= share;
                    j
                }
                None => {
                    features.push(feature);
                    zero.push(share);
                    features.len() - 1
                }
            };
            splits.push((node, left, j as u8));
        }
        let n = features.len();
        if n > MAX_TABLE_FEATURES {
            return None;
        }
        let mut values = vec![0.0; (1 << n) * n];
        let mut elements = vec![PathElement::default(); n + 1];
        for pattern in 0..1usize << n {
            extend(&mut elements, 0, 1.0, 1.0, ROOT);
            for j in 0..n {
                let one = if pattern & (1 << j) != 0 { 1.0 } else { 0.0 };
                extend(&mut elements, j + 1, zero[j], one, features[j]);
            }
            for j in 0..n {
                let el = elements[j + 1];
                values[pattern * n + j] =
                    unwound_sum(&elements, n, j + 1) * (el.one - el.zero) * value;
            }
        }
        Some(Self {
            features,
            splits,
            values,
        })
    }

    fn resident_bytes(&self) -> usize {
        std::mem::size_of::<Self>()
            + self.features.capacity() * 4
            + self.splits.capacity() * std::mem::size_of::<(u32, bool, u8)>()
            + self.values.capacity() * 8
    }
}

/// The feature of the path's first element, which stands for no feature.
const ROOT: u32 = u32::MAX;

#[derive(Debug, Clone, Copy, Default)]
struct PathElement {
    feature: u32,
    /// The share of the rows that reach here with the feature unknown.
    zero: f64,
    /// 1 if `row` reaches here with the feature known, else 0.
    one: f64,
    /// The permutation weight.
    weight: f64,
}

impl Tree {
    /// Checks a tree as read and gives it with its depth.
    fn checked(ft: FileTree, num_features: usize) -> Result<(Tree, usize), String> {
        let n = ft.left.len();
        if n == 0 {
            return Err("no nodes".into());
        }
        for (name, len) in [
            ("right", ft.right.len()),
            ("feature", ft.feature.len()),
            ("threshold", ft.threshold.len()),
            ("default_left", ft.default_left.len()),
            ("value", ft.value.len()),
            ("cover", ft.cover.len()),
        ] {
            if len != n {
                return Err(format!("`{name}` has {len} entries for {n} nodes"));
            }
        }
        let child = |c: i64, parent: usize| -> Result<u32, String> {
            match c {
                -1 => Ok(LEAF),
                c if c as usize > parent && (c as usize) < n => Ok(c as u32),
                c => Err(format!("node {parent} has child {c}")),
            }
        };
        let mut nodes = Vec::with_capacity(n);
        for i in 0..n {
            let (left, right) = (child(ft.left[i], i)?, child(ft.right[i], i)?);
            if (left == LEAF) != (right == LEAF) {
                return Err(format!("node {i} has one child"));
            }
            if left != LEAF && ft.feature[i] as usize >= num_features {
                return Err(format!("node {i} splits on feature {}", ft.feature[i]));
            }
            let in_range = ft.cover[i] > 0.0
                && ft.cover[i].is_finite()
                && ft.value[i].is_finite()
                && ft.threshold[i].is_finite();
            if !in_range {
                return Err(format!(
                    "node {i} has a cover, value or threshold out of range"
                ));
            }
            nodes.push(Node {
                left,
                right,
                feature: ft.feature[i],
                threshold: ft.threshold[i],
                default_left: ft.default_left[i],
                value: ft.value[i],
                cover: ft.cover[i],
            });
        }
        let tree = Tree { nodes };
        let depth = tree.depth(0);
        Ok((tree, depth))
    }

    /// Adds the tables of the leaves under node `i`, reached by `path`; `None` when one is
    /// too wide.
    fn tabulate(
        &self,
        i: usize,
        path: &mut Vec<(u32, u32, bool, f64)>,
        leaves: &mut Vec<LeafTable>,
        bytes: &mut usize,
    ) -> Option<()> {
        let node = self.nodes[i];
        if node.is_leaf() {
            let leaf = LeafTable::new(path, node.value)?;
            *bytes += leaf.resident_bytes();
            leaves.push(leaf);
            return Some(());
        }
        for (child, left) in [(node.left, true), (node.right, false)] {
            let share = self.nodes[child as usize].cover / node.cover;
            path.push((i as u32, node.feature, left, share));
            self.tabulate(child as usize, path, leaves, bytes)?;
            path.pop();
        }
        Some(())
    }

    fn depth(&self, i: usize) -> usize {
        let node = self.nodes[i];
        if node.is_leaf() {
            0
        } else {
            1 + self
                .depth(node.left as usize)
                .max(self.depth(node.right as usize))
        }
    }

    /// The cover-weighted mean of the leaves under node `i` (XGBoost's node mean value).
    fn expected_value(&self, i: usize) -> f64 {
        let node = self.nodes[i];
        if node.is_leaf() {
            return node.value;
        }
        let (l, r) = (node.left as usize, node.right as usize);
        (self.expected_value(l) * self.nodes[l].cover
            + self.expected_value(r) * self.nodes[r].cover)
            / node.cover
    }

    /// The child `row` takes at `node`.
    fn next(node: &Node, row: &[f32]) -> u32 {
        let x = row[node.feature as usize];
        if x.is_nan() {
            if node.default_left {
                node.left
            } else {
                node.right
            }
        } else if x < node.threshold {
            node.left
        } else {
            node.right
        }
    }

    #[cfg(test)]
    fn leaf_value(&self, row: &[f32]) -> f64 {
        let mut i = 0;
        loop {
            let node = &self.nodes[i];
            if node.is_leaf() {
                return node.value;
            }
            i = Self::next(node, row) as usize;
        }
    }

    /// Algorithm 2's RECURSE: `path` holds each level's path, `start` is where the parent's
    /// begins, `depth` its length minus one.
    #[allow(clippy::too_many_arguments)]
    fn shap(
        &self,
        row: &[f32],
        phi: &mut [f64],
        path: &mut [PathElement],
        i: usize,
        start: usize,
        depth: usize,
        zero: f64,
        one: f64,
        feature: u32,
    ) {
        // This level's path: a copy of the parent's, extended by the split that led here.
        let here = start + depth + 1;
        let (parent, rest) = path.split_at_mut(here);
        let unique = &mut rest[..depth + 2];
        unique[..depth + 1].copy_from_slice(&parent[start..start + depth + 1]);
        extend(unique, depth, zero, one, feature);
        let node = self.nodes[i];
        if node.is_leaf() {
            for k in 1..=depth {
                let w = unwound_sum(unique, depth, k);
                let el = unique[k];
                phi[el.feature as usize] += w * (el.one - el.zero) * node.value;
            }
            return;
        }
        let hot = Self::next(&node, row);
        let cold = if hot == node.left {
            node.right
        } else {
            node.left
        };
        let hot_zero = self.nodes[hot as usize].cover / node.cover;
        let cold_zero = self.nodes[cold as usize].cover / node.cover;
        let (mut in_zero, mut in_one) = (1.0, 1.0);
        let mut depth = depth;
        // A feature split on again higher up: undo that split, to redo it here.
        if let Some(k) = (1..=depth).find(|&k| unique[k].feature == node.feature) {
            in_zero = unique[k].zero;
            in_one = unique[k].one;
            unwind(unique, depth, k);
            depth -= 1;
        }
        let f = node.feature;
        self.shap(
            row,
            phi,
            path,
            hot as usize,
            here,
            depth + 1,
            hot_zero * in_zero,
            in_one,
            f,
        );
        self.shap(
            row,
            phi,
            path,
            cold as usize,
            here,
            depth + 1,
            cold_zero * in_zero,
            0.0,
            f,
        );
    }
}

/// EXTEND: adds an element to the path and updates the permutation weights.
fn extend(path: &mut [PathElement], depth: usize, zero: f64, one: f64, feature: u32) {
    path[depth] = PathElement {
        feature,
        zero,
        one,
        weight: if depth == 0 { 1.0 } else { 0.0 },
    };
    let n = (depth + 1) as f64;
    for i in (0..depth).rev() {
        path[i + 1].weight += one * path[i].weight * (i + 1) as f64 / n;
        path[i].weight = zero * path[i].weight * (depth - i) as f64 / n;
    }
}

/// UNWIND: removes element `k` from the path (inverse of `extend`).
fn unwind(path: &mut [PathElement], depth: usize, k: usize) {
    let (one, zero) = (path[k].one, path[k].zero);
    let n = (depth + 1) as f64;
    let mut next_one = path[depth].weight;
    for i in (0..depth).rev() {
        if one != 0.0 {
            let tmp = path[i].weight;
            path[i].weight = next_one * n / ((i + 1) as f64 * one);
            next_one = tmp - path[i].weight * zero * (depth - i) as f64 / n;
        } else {
            path[i].weight = path[i].weight * n / (zero * (depth - i) as f64);
        }
    }
    for i in k..depth {
        path[i].feature = path[i + 1].feature;
        path[i].zero = path[i + 1].zero;
        path[i].one = path[i + 1].one;
    }
}

/// The total permutation weight the path would have with element `k` unwound.
fn unwound_sum(path: &[PathElement], depth: usize, k: usize) -> f64 {
    let (one, zero) = (path[k].one, path[k].zero);
    let n = (depth + 1) as f64;
    let mut next_one = path[depth].weight;
    let mut total = 0.0;
    for i in (0..depth).rev() {
        if one != 0.0 {
            let tmp = next_one * n / ((i + 1) as f64 * one);
            total += tmp;
            next_one = path[i].weight - tmp * zero * ((depth - i) as f64 / n);
        } else if zero != 0.0 {
            total += path[i].weight / zero / ((depth - i) as f64 / n);
        }
    }
    total
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One tree on two features: x0 < 1 → (x1 < 5 → 1 | 3), else 10; covers 4 = (2 = 1 + 1) + 2.
    fn stump() -> Vec<u8> {
        serde_json::to_vec(&serde_json::json!({
            "format": FORMAT, "format_version": 1, "objective": "binary:logistic",
            "link": "logit", "base_margin": 0.5, "num_features": 2,
            "trees": [{
                "left": [1, 3, -1, -1, -1], "right": [2, 4, -1, -1, -1],
                "feature": [0, 1, 0, 0, 0], "threshold": [1.0, 5.0, 0.0, 0.0, 0.0],
                "default_left": [false, true, false, false, false],
                "value": [0.0, 0.0, 10.0, 1.0, 3.0], "cover": [4.0, 2.0, 2.0, 1.0, 1.0]
            }]
        }))
        .unwrap()
    }

    /// Shapley values by their definition: each feature's marginal contribution averaged over
    /// the orderings, a subset's value being the tree's cover-weighted expectation given
    /// the features in it.
    fn brute_force(e: &Ensemble, row: &[f32]) -> Vec<f64> {
        fn value(t: &Tree, i: usize, row: &[f32], known: &[bool]) -> f64 {
            let n = t.nodes[i];
            if n.is_leaf() {
                return n.value;
            }
            if known[n.feature as usize] {
                return value(t, Tree::next(&n, row) as usize, row, known);
            }
            let (l, r) = (n.left as usize, n.right as usize);
            (value(t, l, row, known) * t.nodes[l].cover
                + value(t, r, row, known) * t.nodes[r].cover)
                / n.cover
        }
        let m = row.len();
        let mut phi = vec![0.0; m];
        let fact = |k: usize| (1..=k).product::<usize>() as f64;
        for f in 0..m {
            for set in 0..(1u32 << m) {
                if set & (1 << f) != 0 {
                    continue;
                }
                let known: Vec<bool> = (0..m).map(|j| set & (1 << j) != 0).collect();
                let mut with = known.clone();
                with[f] = true;
                let s = set.count_ones() as usize;
                let w = fact(s) * fact(m - s - 1) / fact(m);
                for t in &e.trees {
                    phi[f] += w * (value(t, 0, row, &with) - value(t, 0, row, &known));
                }
            }
        }
        phi
    }

    #[test]
    fn contributions_are_the_shapley_values_and_add_up_to_the_margin() {
        let e = Ensemble::from_json(&stump(), 2).unwrap();
        // Expected value: (2·(1·1 + 1·3)/2 + 2·10)/4 = 6, plus the base margin.
        assert!((e.base_value() - 6.5).abs() < 1e-12);
        for row in [
            [0.0, 0.0],
            [0.0, 9.0],
            [2.0, 0.0],
            [f32::NAN, 9.0],
            [0.0, f32::NAN],
        ] {
            assert!(e.tabled());
            let phi = e.shap(&row);
            let want = brute_force(&e, &row);
            for (a, b) in phi
                .iter()
                .zip(&want)
                .chain(e.shap_recursive(&row).iter().zip(&want))
            {
                assert!((a - b).abs() < 1e-12, "{row:?}: {phi:?} vs {want:?}");
            }
            let sum = e.base_value() + phi.iter().sum::<f64>();
            assert!((sum - e.margin(&row)).abs() < 1e-12, "{row:?}");
        }
        // A missing x1 goes the default (left) way: the same leaf as x1 = 0.
        assert_eq!(e.shap(&[0.0, f32::NAN]), e.shap(&[0.0, 0.0]));
    }

    #[test]
    fn a_feature_split_twice_on_one_path_is_counted_once() {
        // x0 < 1 → (x0 < 0 → 1 | 2), else 4: the second split on x0 unwinds the first.
        let bytes = serde_json::to_vec(&serde_json::json!({
            "format": FORMAT, "format_version": 1, "objective": "binary:logistic",
            "link": "logit", "base_margin": 0.0, "num_features": 2,
            "trees": [{
                "left": [1, 3, -1, -1, -1], "right": [2, 4, -1, -1, -1],
                "feature": [0, 0, 0, 0, 0], "threshold": [1.0, 0.0, 0.0, 0.0, 0.0],
                "default_left": [true, true, false, false, false],
                "value": [0.0, 0.0, 4.0, 1.0, 2.0], "cover": [6.0, 3.0, 3.0, 1.0, 2.0]
            }]
        }))
        .unwrap();
        let e = Ensemble::from_json(&bytes, 2).unwrap();
        for row in [[-1.0, 0.0], [0.5, 0.0], [3.0, 7.0]] {
            let phi = e.shap(&row);
            assert_eq!(phi[1], 0.0);
            assert!((phi[0] - brute_force(&e, &row)[0]).abs() < 1e-12);
            assert!((phi[0] - e.shap_recursive(&row)[0]).abs() < 1e-12);
            assert!((e.base_value() + phi[0] - e.margin(&row)).abs() < 1e-12);
        }
    }

    /// A chain of splits on more distinct features than a table takes: the recursion explains
    /// it, and gives the Shapley values.
    #[test]
    fn a_tree_too_deep_for_tables_is_explained_by_the_recursion() {
        let depth = MAX_TABLE_FEATURES + 1;
        // Node 2k splits on feature k (x < 0 → node 2k+1, a leaf; else node 2k+2); the last
        // node is a leaf. Covers halve down the chain.
        let n = 2 * depth + 1;
        let (mut left, mut right, mut feature, mut value, mut cover) = (
            vec![-1i64; n],
            vec![-1i64; n],
            vec![0u32; n],
            vec![0.0; n],
            vec![0.0; n],
        );
        let mut c = f64::from(1u32 << (depth + 1));
        for k in 0..depth {
            let i = 2 * k;
            left[i] = (i + 1) as i64;
            right[i] = (i + 2) as i64;
            feature[i] = k as u32;
            cover[i] = c;
            cover[i + 1] = c / 2.0;
            value[i + 1] = k as f64 - 2.0;
            c /= 2.0;
        }
        value[n - 1] = 7.0;
        // The last leaf's cover: what is left of its parent's.
        cover[n - 1] = cover[n - 3] - cover[n - 2];
        let bytes = serde_json::to_vec(&serde_json::json!({
            "format": FORMAT, "format_version": 1, "objective": "binary:logistic",
            "link": "logit", "base_margin": 0.0, "num_features": depth,
            "trees": [{
                "left": left, "right": right, "feature": feature,
                "threshold": vec![0.0; n], "default_left": vec![true; n],
                "value": value, "cover": cover
            }]
        }))
        .unwrap();
        let e = Ensemble::from_json(&bytes, depth).unwrap();
        assert!(!e.tabled());
        let row: Vec<f32> = (0..depth)
            .map(|k| if k == 5 { -1.0 } else { 1.0 })
            .collect();
        let (phi, want) = (e.shap(&row), brute_force(&e, &row));
        for (a, b) in phi.iter().zip(&want) {
            assert!((a - b).abs() < 1e-9, "{phi:?} vs {want:?}");
        }
        assert!((e.base_value() + phi.iter().sum::<f64>() - e.margin(&row)).abs() < 1e-9);
    }

    #[test]
    fn a_bad_trees_file_is_refused_with_the_reason() {
        let good: serde_json::Value = serde_json::from_slice(&stump()).unwrap();
        let with = |path: &str, v: serde_json::Value| {
            let mut j = good.clone();
            *j.pointer_mut(path).unwrap() = v;
            Ensemble::from_json(&serde_json::to_vec(&j).unwrap(), 2).unwrap_err()
        };
        assert!(with("/format", "other".into()).contains("format"));
        assert!(with("/objective", "multi:softprob".into()).contains("binary:logistic"));
        assert!(with("/trees/0/left/1", 0.into()).contains("child 0"));
        assert!(with("/trees/0/left/0", 9.into()).contains("child 9"));
        assert!(with("/trees/0/feature/0", 2.into()).contains("feature 2"));
        assert!(with("/trees/0/cover/2", 0.into()).contains("cover"));
        assert!(with("/trees/0/right/1", (-1).into()).contains("one child"));
        assert!(with("/trees/0/value", serde_json::json!([0.0])).contains("`value` has 1"));
        assert!(
            Ensemble::from_json(&stump(), 3)
                .unwrap_err()
                .contains("card 3")
        );
        assert!(
            Ensemble::from_json(b"{}", 2)
                .unwrap_err()
                .contains("not a trees file")
        );
    }
}
