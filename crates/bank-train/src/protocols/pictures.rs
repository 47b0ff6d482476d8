//! Pictures people read faster than numbers: `retrieval.png` (test queries and their nearest
//! training images) and `merges.png` (a sample of merged groups after a merging round).
//!
//! Tiles are the images resized to [`TILE`] pixels; a neighbour's border is green when its class
//! is the query's, red otherwise. Drawing is a diagnostic: callers log failures and go on.

use std::path::Path;

use bank_data::Dataset;
use image::imageops::FilterType;
use image::{Rgb, RgbImage};

use crate::{Error, Result};

/// Side of one tile, border included.
pub const TILE: u32 = 64;
/// Border width.
const BORDER: u32 = 4;
/// Gap between tiles and around the query column.
const GAP: u32 = 4;

const GREEN: Rgb<u8> = Rgb([40, 180, 60]);
const RED: Rgb<u8> = Rgb([220, 40, 40]);
const GREY: Rgb<u8> = Rgb([128, 128, 128]);
const WHITE: Rgb<u8> = Rgb([255, 255, 255]);

/// One row of a picture: images (dataset, index) with a border colour each.
struct Row<'a> {
    tiles: Vec<(&'a dyn Dataset, usize, Rgb<u8>)>,
}

/// Image `index` of `dataset` as a `TILE`-sided tile inside a `colour` border.
fn tile(dataset: &dyn Dataset, index: usize, colour: Rgb<u8>) -> Result<RgbImage> {
    let loaded = dataset.image(index)?;
    let view = loaded.view();
    let raw = RgbImage::from_raw(view.width as u32, view.height as u32, view.pixels.to_vec())
        .ok_or_else(|| Error::Config {
            field: "pictures".into(),
            reason: format!("image {} is not RGB", dataset.item_source(index)),
        })?;
    let inner = TILE - 2 * BORDER;
    let small = image::imageops::resize(&raw, inner, inner, FilterType::Triangle);
    let mut out = RgbImage::from_pixel(TILE, TILE, colour);
    image::imageops::overlay(&mut out, &small, i64::from(BORDER), i64::from(BORDER));
    Ok(out)
}

/// Draws `rows` (the first tile of each row set apart by an extra gap when `lead` is true) into
/// a PNG at `path`.
fn draw(path: &Path, rows: &[Row<'_>], lead: bool) -> Result<()> {
    let cols = rows.iter().map(|r| r.tiles.len()).max().unwrap_or(0) as u32;
    let extra = if lead { 2 * GAP } else { 0 };
    let width = GAP + cols * (TILE + GAP) + extra;
    let height = GAP + rows.len() as u32 * (TILE + GAP);
    let mut canvas = RgbImage::from_pixel(width.max(1), height.max(1), WHITE);
    for (r, row) in rows.iter().enumerate() {
        let y = GAP + r as u32 * (TILE + GAP);
        for (c, &(dataset, index, colour)) in row.tiles.iter().enumerate() {
            let x = GAP + c as u32 * (TILE + GAP) + if lead && c > 0 { extra } else { 0 };
            let t = tile(dataset, index, colour)?;
            image::imageops::overlay(&mut canvas, &t, i64::from(x), i64::from(y));
        }
    }
    canvas
        .save(path)
        .map_err(|e| Error::io(path, std::io::Error::other(e)))
}

/// `retrieval.png`: each query (grey border) followed by its nearest reference images, green
/// when the class matches, red otherwise. `neighbours[q]` lists reference indices, best first.
///
/// # Errors
/// Unreadable images or an unwritable file.
pub fn retrieval(
    path: &Path,
    queries: &dyn Dataset,
    reference: &dyn Dataset,
    shown: &[usize],
    neighbours: &[Vec<usize>],
) -> Result<()> {
    let rows: Vec<Row<'_>> = shown
        .iter()
        .zip(neighbours)
        .map(|(&q, near)| {
            let mut tiles = vec![(queries, q, GREY)];
            let truth = queries.label(q);
            tiles.extend(near.iter().map(|&j| {
                let colour = if truth.is_some() && reference.label(j) == truth {
                    GREEN
                } else {
                    RED
                };
                (reference, j, colour)
            }));
            Row { tiles }
        })
        .collect();
    draw(path, &rows, true)
}

/// `merges.png`: one row per group (members of `groups`, training-set indices, at most
/// `per_row` shown); a member's border is green when its class is the group's most common
/// class, red otherwise, grey when unlabelled.
///
/// # Errors
/// Unreadable images or an unwritable file.
pub fn merges(
    path: &Path,
    train: &dyn Dataset,
    groups: &[Vec<usize>],
    per_row: usize,
) -> Result<()> {
    let rows: Vec<Row<'_>> = groups
        .iter()
        .map(|members| {
            let majority = majority_label(train, members);
            Row {
                tiles: members
                    .iter()
                    .take(per_row)
                    .map(|&i| {
                        let colour = match (majority, train.label(i)) {
                            (Some(m), Some(l)) if m == l => GREEN,
                            (Some(_), Some(_)) => RED,
                            _ => GREY,
                        };
                        (train, i, colour)
                    })
                    .collect(),
            }
        })
        .collect();
    draw(path, &rows, false)
}

/// The most common label among `members` (ties to the lower label).
fn majority_label(train: &dyn Dataset, members: &[usize]) -> Option<u32> {
    let mut counts = std::collections::BTreeMap::<u32, usize>::new();
    for &i in members {
        *counts.entry(train.label(i)?).or_default() += 1;
    }
    counts
        .into_iter()
        .max_by(|a, b| a.1.cmp(&b.1).then(b.0.cmp(&a.0)))
        .map(|(l, _)| l)
}

/// Up to `count` merged groups (two members or more) from the group id of every row: the
/// largest first, then spread over the rest in order of their smallest member.
pub fn sample_groups(group_ids: &[u32], count: usize) -> Vec<Vec<usize>> {
    let mut by_id = std::collections::BTreeMap::<u32, Vec<usize>>::new();
    for (row, &g) in group_ids.iter().enumerate() {
        by_id.entry(g).or_default().push(row);
    }
    let mut groups: Vec<Vec<usize>> = by_id.into_values().filter(|m| m.len() > 1).collect();
    if count == 0 {
        return Vec::new();
    }
    if groups.len() <= count {
        groups.sort_by_key(|g| std::cmp::Reverse(g.len()));
        return groups;
    }
    let largest = groups
        .iter()
        .enumerate()
        .max_by_key(|(i, g)| (g.len(), std::cmp::Reverse(*i)))
        .map(|(i, _)| i)
        .expect("non-empty");
    let first = groups.remove(largest);
    let step = groups.len() as f64 / (count - 1).max(1) as f64;
    let mut out = vec![first];
    out.extend((0..count - 1).map(|i| groups[(i as f64 * step) as usize].clone()));
    out
}
