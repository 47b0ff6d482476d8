//! Issue 10, bad input 1: symbolic links in folders and hard/symbolic links in tar archives are
//! followed (never silently dropped); loops and dangling links are errors naming them.

use std::fs;
use std::os::unix::fs::symlink;
use std::path::Path;

use bank_data::*;

use crate::common::{cifar_jpegs, reference_rgb};

/// 10 class folders of 20 JPEGs each; in `cls0`, images 10..20 are symbolic links to JPEGs
/// kept in a folder outside the root. Returns the root.
fn tree_with_links(dir: &Path) -> std::path::PathBuf {
    let root = dir.join("root");
    let outside = dir.join("outside");
    fs::create_dir_all(&outside).unwrap();
    let jpegs = cifar_jpegs("test/", 200);
    for (k, (_, bytes)) in jpegs.iter().enumerate() {
        let (class, i) = (k / 20, k % 20);
        let folder = root.join(format!("cls{class}"));
        fs::create_dir_all(&folder).unwrap();
        let file = folder.join(format!("{i:02}.jpg"));
        if class == 0 && i >= 10 {
            let target = outside.join(format!("{i:02}.jpg"));
            fs::write(&target, bytes).unwrap();
            symlink(&target, &file).unwrap();
        } else {
            fs::write(&file, bytes).unwrap();
        }
    }
    root
}

#[test]
fn a_class_folder_with_half_its_images_as_symlinks_gives_all_200_images() {
    let dir = tempfile::tempdir().unwrap();
    let root = tree_with_links(dir.path());
    let ds =
        read_image_folder(&root, FolderLayout::ClassFolders, DecodeOptions::default()).unwrap();
    assert_eq!(ds.len(), 200, "never 190");
    assert_eq!(ds.labels().unwrap().iter().filter(|&&l| l == 0).count(), 20);
    // A linked image holds its target's pixels (reference: the image crate on the target).
    let target = fs::read(dir.path().join("outside/15.jpg")).unwrap();
    assert_eq!(
        ds.get(15).pixels,
        reference_rgb(&target).as_raw().as_slice()
    );
    assert!(
        ds.item_source(15).ends_with("cls0/15.jpg"),
        "{}",
        ds.item_source(15)
    );

    // A symlinked class folder is a class too.
    symlink(root.join("cls1"), root.join("cls1_again")).unwrap();
    let index = ImageIndex::scan_folder(&root, &ScanOptions::default()).unwrap();
    assert_eq!(index.len(), 220);
    assert!(index.class_names().contains(&"cls1_again".to_string()));

    // With following off, the links are refused by name, not dropped.
    let e = ImageIndex::scan_folder(&root, &ScanOptions::default().with_follow_links(false))
        .unwrap_err();
    assert!(matches!(e, Error::Link { .. }), "{e}");
}

#[test]
fn a_symlink_loop_or_a_dangling_link_is_an_error_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let root = tree_with_links(dir.path());
    symlink(&root, root.join("cls3").join("loop")).unwrap();
    let e = ImageIndex::scan_folder(&root, &ScanOptions::default()).unwrap_err();
    let text = e.to_string();
    assert!(matches!(e, Error::Link { .. }), "{text}");
    assert!(
        text.contains("cls3/loop") && text.contains("loop"),
        "{text}"
    );

    fs::remove_file(root.join("cls3").join("loop")).unwrap();
    symlink(
        dir.path().join("missing.jpg"),
        root.join("cls4").join("gone.jpg"),
    )
    .unwrap();
    let e = ImageIndex::scan_folder(&root, &ScanOptions::default()).unwrap_err();
    let text = e.to_string();
    assert!(
        text.contains("cls4/gone.jpg") && text.contains("dangling"),
        "{text}"
    );
}

/// A tar of `a/0.jpg, a/1.jpg, b/0.jpg` plus `a/2.jpg` hard-linked to `a/0.jpg`, `b/1.jpg` a
/// symlink to `../a/1.jpg`, `b/2.jpg` a symlink to a symlink, and `c` a symlink to folder `a`.
fn tar_with_links(path: &Path, extra: impl FnOnce(&mut tar::Builder<fs::File>)) -> Vec<Vec<u8>> {
    let jpegs: Vec<Vec<u8>> = cifar_jpegs("test/dog/", 3)
        .into_iter()
        .map(|j| j.1)
        .collect();
    let mut b = tar::Builder::new(fs::File::create(path).unwrap());
    let file = |b: &mut tar::Builder<fs::File>, name: &str, bytes: &[u8]| {
        let mut h = tar::Header::new_gnu();
        h.set_size(bytes.len() as u64);
        h.set_mode(0o644);
        h.set_cksum();
        b.append_data(&mut h, name, bytes).unwrap();
    };
    let link = |b: &mut tar::Builder<fs::File>, kind, name: &str, target: &str| {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(kind);
        h.set_size(0);
        h.set_cksum();
        b.append_link(&mut h, name, target).unwrap();
    };
    file(&mut b, "data/a/0.jpg", &jpegs[0]);
    file(&mut b, "data/a/1.jpg", &jpegs[1]);
    file(&mut b, "data/b/0.jpg", &jpegs[2]);
    link(&mut b, tar::EntryType::Link, "data/a/2.jpg", "data/a/0.jpg");
    link(
        &mut b,
        tar::EntryType::Symlink,
        "data/b/1.jpg",
        "../a/1.jpg",
    );
    link(&mut b, tar::EntryType::Symlink, "data/b/2.jpg", "1.jpg");
    link(&mut b, tar::EntryType::Symlink, "data/c", "a");
    extra(&mut b);
    b.finish().unwrap();
    jpegs
}

#[test]
fn hard_links_and_symlinks_inside_a_tar_resolve_to_their_target() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("links.tar");
    let jpegs = tar_with_links(&path, |_| {});
    let ds = read_image_archive(
        &path,
        "data",
        FolderLayout::ClassFolders,
        DecodeOptions::default(),
    )
    .unwrap();
    assert_eq!(ds.class_names(), ["a", "b", "c"]);
    // a/0 a/1 a/2(=a/0) b/0 b/1(=a/1) b/2(=a/1) c/0(=a/0) c/1(=a/1) c/2(=a/0)
    let expected = [0, 1, 0, 2, 1, 1, 0, 1, 0];
    assert_eq!(ds.len(), expected.len());
    for (i, &j) in expected.iter().enumerate() {
        assert_eq!(
            ds.get(i).pixels,
            reference_rgb(&jpegs[j]).as_raw().as_slice(),
            "item {i}"
        );
    }
    assert_eq!(ds.labels().unwrap(), [0, 0, 0, 1, 1, 1, 2, 2, 2]);
    assert!(
        ds.item_source(4).ends_with("links.tar!data/b/1.jpg"),
        "{}",
        ds.item_source(4)
    );
    // The streaming path reads the same members by offset.
    let index = ImageIndex::scan_archive(&path, "data", &ScanOptions::default()).unwrap();
    let streaming = index.streaming(DecodeOptions::default()).unwrap();
    for i in 0..ds.len() {
        assert_eq!(streaming.image(i).unwrap().view().pixels, ds.get(i).pixels);
    }
}

#[test]
fn a_dangling_link_or_a_loop_inside_a_tar_is_an_error_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let symlink_entry = |name: &'static str, target: &'static str| {
        move |b: &mut tar::Builder<fs::File>| {
            let mut h = tar::Header::new_gnu();
            h.set_entry_type(tar::EntryType::Symlink);
            h.set_size(0);
            h.set_cksum();
            b.append_link(&mut h, name, target).unwrap();
        }
    };
    let cases = [
        (
            "dangling.tar",
            symlink_entry("data/b/3.jpg", "nothing.jpg"),
            "data/b/3.jpg",
            "dangling",
        ),
        (
            "loop.tar",
            symlink_entry("data/b/4.jpg", "4.jpg"),
            "data/b/4.jpg",
            "loop",
        ),
        (
            "dirloop.tar",
            symlink_entry("data/a/up", ".."),
            "data/a/up",
            "loop",
        ),
    ];
    for (name, extra, member, word) in cases {
        let path = dir.path().join(name);
        tar_with_links(&path, extra);
        let e = ImageIndex::scan_archive(&path, "data", &ScanOptions::default()).unwrap_err();
        let text = e.to_string();
        assert!(matches!(e, Error::Link { .. }), "{text}");
        assert!(
            text.contains(&format!("{name}!{member}")) && text.contains(word),
            "{text}"
        );
    }
}

/// `scan_folder` on `root` in a thread, failing the test (not hanging it) after 60 s.
fn scan_within_a_minute(root: &Path) -> Result<ImageIndex> {
    let (send, receive) = std::sync::mpsc::channel();
    let root = root.to_path_buf();
    std::thread::spawn(move || {
        // The receiver gone (timed out): nothing to report to.
        let _ = send.send(ImageIndex::scan_folder(&root, &ScanOptions::default()));
    });
    receive
        .recv_timeout(std::time::Duration::from_secs(60))
        .expect("the scan did not finish within a minute")
}

#[test]
fn a_named_pipe_or_a_socket_among_the_images_is_an_error_naming_it_not_a_hang() {
    let dir = tempfile::tempdir().unwrap();
    let root = tree_with_links(dir.path());
    // Reading a pipe nobody writes to blocks for ever: the scan must not open it.
    let pipe = root.join("cls2").join("pipe.jpg");
    let made = std::process::Command::new("mkfifo").arg(&pipe).status();
    assert!(made.unwrap().success(), "mkfifo");
    let e = scan_within_a_minute(&root).unwrap_err().to_string();
    assert!(
        e.contains("cls2/pipe.jpg") && e.contains("not a regular file"),
        "{e}"
    );
    // Reached through a symbolic link (followed by default): the same.
    fs::remove_file(&pipe).unwrap();
    let outside_pipe = dir.path().join("outside").join("pipe");
    let made = std::process::Command::new("mkfifo")
        .arg(&outside_pipe)
        .status();
    assert!(made.unwrap().success(), "mkfifo");
    symlink(&outside_pipe, root.join("cls5").join("link.jpg")).unwrap();
    let e = scan_within_a_minute(&root).unwrap_err().to_string();
    assert!(
        e.contains("cls5/link.jpg") && e.contains("not a regular file"),
        "{e}"
    );
    fs::remove_file(root.join("cls5").join("link.jpg")).unwrap();
    let _socket = std::os::unix::net::UnixListener::bind(root.join("cls7").join("s.png")).unwrap();
    let e = scan_within_a_minute(&root).unwrap_err().to_string();
    assert!(
        e.contains("cls7/s.png") && e.contains("not a regular file"),
        "{e}"
    );
    fs::remove_file(root.join("cls7").join("s.png")).unwrap();
    assert_eq!(scan_within_a_minute(&root).unwrap().len(), 200);
}
