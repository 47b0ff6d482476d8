//! Pictures people read faster than numbers: `retrieval.png` (test queries and their nearest
//! other test images) and `merges.png` (a sample of merged groups after a merging round).
//!
//! Tiles are the images resized to [`TILE`] pixels; a neighbour's border is green when its class
//! is the query's, red otherwise. Under each tile its class name is written in an embedded 8×8
//! bitmap font (`font8x8`, so no system font is needed), cut to the tile's width. Drawing is a
//! diagnostic: callers log failures and go on.

use std::path::Path;

use bank_data::Dataset;
use font8x8::{BASIC_FONTS, UnicodeFonts};
use image::imageops::FilterType;
use image::{Rgb, RgbImage};

use crate::{Error, Result};

/// Side of one tile, border included: ten 8-pixel characters of caption fit under it.
pub const TILE: u32 = 80;
/// Height of the caption band under each tile: an 8-pixel glyph and its margins.
const CAPTION: u32 = 12;
/// Side of one caption glyph.
const GLYPH: u32 = 8;
/// Border width.
const BORDER: u32 = 4;
/// Gap between tiles and around the query column.
const GAP: u32 = 4;

const GREEN: Rgb<u8> = Rgb([40, 180, 60]);
const RED: Rgb<u8> = Rgb([220, 40, 40]);
const GREY: Rgb<u8> = Rgb([128, 128, 128]);
const WHITE: Rgb<u8> = Rgb([255, 255, 255]);
const INK: Rgb<u8> = Rgb([20, 20, 20]);

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

/// Writes `text` in `INK` with its top-left corner at (`x`, `y`), at most `max_width` pixels
/// wide (characters past it are dropped; one the font lacks is drawn as `?`). Pixels outside
/// the canvas are skipped.
fn caption(canvas: &mut RgbImage, x: u32, y: u32, text: &str, max_width: u32) {
    let fits = (max_width / GLYPH) as usize;
    for (n, ch) in text.chars().take(fits).enumerate() {
        let glyph = BASIC_FONTS
            .get(ch)
            .or_else(|| BASIC_FONTS.get('?'))
            .unwrap_or([0; 8]);
        let left = x + n as u32 * GLYPH;
        for (dy, bits) in glyph.iter().enumerate() {
            for dx in 0..GLYPH {
                // font8x8: bit 0 of each row byte is the leftmost pixel.
                let (px, py) = (left + dx, y + dy as u32);
                if bits >> dx & 1 == 1 && px < canvas.width() && py < canvas.height() {
                    canvas.put_pixel(px, py, INK);
                }
            }
        }
    }
}

/// The class name of image `index` of `dataset`, empty when it is unlabelled.
fn class_name(dataset: &dyn Dataset, index: usize) -> &str {
    dataset
        .label(index)
        .and_then(|l| dataset.class_names().get(l as usize))
        .map_or("", String::as_str)
}

/// Draws `rows` (the first tile of each row set apart by an extra gap when `lead` is true),
/// each tile captioned with its class name, into a PNG at `path`.
fn draw(path: &Path, rows: &[Row<'_>], lead: bool) -> Result<()> {
    let cols = rows.iter().map(|r| r.tiles.len()).max().unwrap_or(0) as u32;
    let extra = if lead { 2 * GAP } else { 0 };
    let width = GAP + cols * (TILE + GAP) + extra;
    let row_height = TILE + CAPTION + GAP;
    let height = GAP + rows.len() as u32 * row_height;
    let mut canvas = RgbImage::from_pixel(width.max(1), height.max(1), WHITE);
    for (r, row) in rows.iter().enumerate() {
        let y = GAP + r as u32 * row_height;
        for (c, &(dataset, index, colour)) in row.tiles.iter().enumerate() {
            let x = GAP + c as u32 * (TILE + GAP) + if lead && c > 0 { extra } else { 0 };
            let t = tile(dataset, index, colour)?;
            image::imageops::overlay(&mut canvas, &t, i64::from(x), i64::from(y));
            let name = class_name(dataset, index);
            caption(&mut canvas, x, y + TILE + (CAPTION - GLYPH) / 2, name, TILE);
        }
    }
    canvas
        .save(path)
        .map_err(|e| Error::io(path, std::io::Error::other(e)))
}

/// `retrieval.png`: each query (grey border) followed by its nearest images (of `reference`), green
/// when the class matches, red otherwise, each captioned with its class name. `neighbours[q]` lists reference indices, best first.
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
/// class, red otherwise, grey when unlabelled; each is captioned with its class name.
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

#[cfg(test)]
mod tests {
    use bank_data::{ImageDataset, ImageStore};

    use super::*;

    /// Two 16×16 black images labelled `class_a` and `class_b`.
    fn two_images(class_a: &str, class_b: &str) -> ImageDataset {
        let mut store = ImageStore::with_capacity(2, 2 * 16 * 16 * 3);
        store.push(16, 16, &[0; 16 * 16 * 3]);
        store.push(16, 16, &[0; 16 * 16 * 3]);
        let names = vec![class_a.to_string(), class_b.to_string()];
        ImageDataset::new(store, Some(vec![0, 1]), names, "memory")
    }

    /// The caption band of tile `column` in row 0 of `merges.png`, as booleans (ink or not).
    fn band(canvas: &RgbImage, column: u32) -> Vec<Vec<bool>> {
        let (x0, y0) = (
            GAP + column * (TILE + GAP),
            GAP + TILE + (CAPTION - GLYPH) / 2,
        );
        (0..GLYPH)
            .map(|dy| {
                (0..TILE)
                    .map(|dx| *canvas.get_pixel(x0 + dx, y0 + dy) == INK)
                    .collect()
            })
            .collect()
    }

    /// The expected ink of `text` from font8x8's table, read directly: bit `dx` of row `dy`.
    fn expected(text: &str) -> Vec<Vec<bool>> {
        let glyphs: Vec<[u8; 8]> = text
            .chars()
            .take((TILE / GLYPH) as usize)
            .map(|c| BASIC_FONTS.get(c).unwrap())
            .collect();
        (0..GLYPH as usize)
            .map(|dy| {
                (0..TILE as usize)
                    .map(|dx| {
                        glyphs
                            .get(dx / 8)
                            .is_some_and(|g| g[dy] & (1 << (dx % 8)) != 0)
                    })
                    .collect()
            })
            .collect()
    }

    #[test]
    fn merges_png_writes_each_members_class_under_it_cut_to_the_tile() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("merges.png");
        let data = two_images("dog", "automobile_long");
        merges(&path, &data, &[vec![0, 1]], 8).unwrap();
        let canvas = image::open(&path).unwrap().to_rgb8();
        assert_eq!(canvas.height(), GAP + TILE + CAPTION + GAP);
        assert_eq!(band(&canvas, 0), expected("dog"));
        // Ten characters fit under an 80-pixel tile; the rest is cut.
        assert_eq!(band(&canvas, 1), expected("automobile"));
        assert_ne!(band(&canvas, 0), band(&canvas, 1));
    }

    #[test]
    fn unlabelled_images_get_no_caption() {
        let mut store = ImageStore::with_capacity(1, 16 * 16 * 3);
        store.push(16, 16, &[0; 16 * 16 * 3]);
        let data = ImageDataset::new(store, None, Vec::new(), "memory");
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("merges.png");
        merges(&path, &data, &[vec![0]], 8).unwrap();
        let canvas = image::open(&path).unwrap().to_rgb8();
        assert!(band(&canvas, 0).iter().flatten().all(|ink| !ink));
    }
}
