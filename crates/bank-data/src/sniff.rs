//! What a file holds, judged from its bytes: JPEG or PNG by magic bytes (never by the name), and
//! whether a JPEG's data is complete.

/// Bytes read from the start of a file to recognise its format.
pub(crate) const SNIFF_BYTES: usize = 16;

/// The encoded image formats this crate decodes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ImageKind {
    /// JPEG (JFIF/EXIF), baseline or progressive.
    Jpeg,
    /// PNG.
    Png,
}

impl ImageKind {
    /// The format of a file from its first bytes (at least the first 8), or `None` when they are
    /// not those of a JPEG or PNG.
    pub fn sniff(head: &[u8]) -> Option<Self> {
        match image::guess_format(head).ok()? {
            image::ImageFormat::Jpeg => Some(Self::Jpeg),
            image::ImageFormat::Png => Some(Self::Png),
            _ => None,
        }
    }

    pub(crate) fn format(self) -> image::ImageFormat {
        match self {
            Self::Jpeg => image::ImageFormat::Jpeg,
            Self::Png => image::ImageFormat::Png,
        }
    }
}

/// Why a file is not a decodable image, in words, from its first bytes: another image format
/// by name, or what the bytes are.
pub(crate) fn not_an_image(head: &[u8]) -> String {
    if let Ok(format) = image::guess_format(head) {
        return format!(
            "a {format:?} image: only JPEG and PNG are decoded (convert it to one of them)"
        );
    }
    let shown: String = head
        .iter()
        .take(8)
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(" ");
    format!("not a JPEG or PNG image (content starts with [{shown}])")
}

/// Extensions (lower case) of image formats: torchvision's `IMG_EXTENSIONS` (`ImageFolder`'s
/// filter) and the other common ones.
pub const IMAGE_EXTENSIONS: &[&str] = &[
    "jpg", "jpeg", "png", "ppm", "pgm", "pbm", "pnm", "bmp", "tif", "tiff", "webp", "gif", "heic",
    "heif", "avif", "jxl", "jp2", "ico", "tga", "exr", "hdr", "qoi",
];

/// Whether `name` ends in one of [`IMAGE_EXTENSIONS`] (any case).
pub fn has_image_extension(name: &str) -> bool {
    extension(name).is_some_and(|e| IMAGE_EXTENSIONS.contains(&e.to_ascii_lowercase().as_str()))
}

/// Whether a file that holds no JPEG or PNG is not meant as an image at all, so a scan leaves it
/// out instead of calling it a bad image: its name is not an image format's
/// ([`has_image_extension`]), its first bytes are no image format that `image` knows, and it
/// has another extension (`notes.txt`, `labels.csv`, `Thumbs.db`: what torchvision's
/// `ImageFolder` passes over by name) or, without one, its bytes are text (`LICENSE`,
/// `README`). A file named as an image, a binary file without an extension and a file holding
/// another image format are bad images instead.
pub(crate) fn is_not_an_image_file(name: &str, head: &[u8]) -> bool {
    !has_image_extension(name)
        && image::guess_format(head).is_err()
        && (extension(name).is_some() || is_text(head))
}

/// Whether `head` (the first bytes of a file) reads as text: UTF-8 (a character cut at the end
/// allowed) without control characters other than tab, line feed and carriage return.
fn is_text(head: &[u8]) -> bool {
    let valid = match std::str::from_utf8(head) {
        Ok(text) => text,
        // Cut in the middle of a character at the end of `head`: the part before it.
        Err(e) if e.error_len().is_none() => {
            std::str::from_utf8(&head[..e.valid_up_to()]).expect("valid up to there")
        }
        Err(_) => return false,
    };
    valid
        .chars()
        .all(|c| !c.is_control() || matches!(c, '\t' | '\n' | '\r'))
}

/// The extension of the last component of a `/`-separated name, without the dot (`None` for
/// none, and for a name that is only a dot and an extension).
fn extension(name: &str) -> Option<&str> {
    let file = name.rsplit(['/', '\\']).next().unwrap_or(name);
    match file.rsplit_once('.') {
        Some((stem, ext)) if !stem.is_empty() && !ext.is_empty() => Some(ext),
        _ => None,
    }
}

/// Checks that a JPEG is complete: every marker segment is whole and the entropy-coded data of
/// the last scan is followed by the end-of-image marker (`FF D9`).
///
/// The `image` crate's JPEG decoder (zune-jpeg, non-strict) fills data missing at the end of a
/// file with zeros and reports success; a cut-off file must be a decode error instead.
///
/// # Errors
/// A sentence saying what is missing, for the caller to wrap with the file name.
pub(crate) fn check_jpeg_complete(bytes: &[u8]) -> Result<(), String> {
    let n = bytes.len();
    let truncated = |at: usize| {
        format!("truncated JPEG: the data ends at byte {at} of {n} before the end-of-image marker")
    };
    if n < 4 || bytes[..2] != [0xFF, 0xD8] {
        return Err("no JPEG start-of-image marker".into());
    }
    let mut i = 2;
    loop {
        // Find the next marker, tolerating junk and fill bytes between segments.
        while i < n && bytes[i] != 0xFF {
            i += 1;
        }
        while i < n && bytes[i] == 0xFF {
            i += 1;
        }
        let Some(&marker) = bytes.get(i) else {
            return Err(truncated(n));
        };
        i += 1;
        match marker {
            0xD9 => return Ok(()),
            0x01 | 0xD0..=0xD7 => {}
            _ => {
                let Some(len) = bytes.get(i..i + 2) else {
                    return Err(truncated(n));
                };
                let len = usize::from(u16::from_be_bytes([len[0], len[1]]));
                if len < 2 || i + len > n {
                    return Err(truncated(n));
                }
                i += len;
                if marker == 0xDA {
                    i = end_of_entropy_data(bytes, i).ok_or_else(|| truncated(n))?;
                }
            }
        }
    }
}

/// Checks that a PNG ends with a whole `IEND` chunk (type and CRC). The PNG decoder already
/// fails on missing image data; a file cut inside its last chunk would otherwise pass.
///
/// # Errors
/// A sentence saying what is missing.
pub(crate) fn check_png_complete(bytes: &[u8]) -> Result<(), String> {
    match bytes.windows(4).rposition(|w| w == b"IEND") {
        Some(pos) if pos + 8 <= bytes.len() => Ok(()),
        _ => Err(format!(
            "truncated PNG: the data ends at byte {} without a whole IEND chunk",
            bytes.len()
        )),
    }
}

/// The cheap test of completeness on a file's last bytes: a JPEG's end-of-image marker among
/// them, or a PNG ending with its `IEND` chunk (type, then the 4-byte CRC). `false` means "look
/// at the whole file", not "broken".
pub(crate) fn tail_is_complete(kind: ImageKind, tail: &[u8]) -> bool {
    match kind {
        ImageKind::Jpeg => tail.windows(2).any(|w| w == [0xFF, 0xD9]),
        ImageKind::Png => tail.len() >= 8 && &tail[tail.len() - 8..tail.len() - 4] == b"IEND",
    }
}

/// The position of the marker that ends the entropy-coded data starting at `start` (its `FF`),
/// or `None` when the data runs to the end of the file.
fn end_of_entropy_data(bytes: &[u8], start: usize) -> Option<usize> {
    let mut i = start;
    loop {
        i += bytes.get(i..)?.iter().position(|&b| b == 0xFF)?;
        match *bytes.get(i + 1)? {
            // Stuffed zero byte, restart marker: still data.
            0x00 | 0xD0..=0xD7 => i += 2,
            // A fill byte before a marker.
            0xFF => i += 1,
            _ => return Some(i),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn marker_walk_finds_eoi_and_notices_cuts() {
        // SOI, an APP0 segment of length 4, SOS of length 3, data with a stuffed FF 00 and a
        // restart marker, EOI.
        let jpeg = [
            0xFF, 0xD8, 0xFF, 0xE0, 0x00, 0x04, 0xAA, 0xBB, 0xFF, 0xDA, 0x00, 0x03, 0x01, 0x12,
            0xFF, 0x00, 0x34, 0xFF, 0xD0, 0x56, 0xFF, 0xD9,
        ];
        assert_eq!(check_jpeg_complete(&jpeg), Ok(()));
        for cut in 2..jpeg.len() {
            assert!(check_jpeg_complete(&jpeg[..cut]).is_err(), "cut at {cut}");
        }
    }
}
