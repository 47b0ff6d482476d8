//! The namespace of a tar archive, with its hard and symbolic links resolved to the member that
//! holds the data: a link is never dropped; a dangling link or a loop is an error naming it.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::tree::is_hidden;
use crate::{Error, Result};

/// Hops through links before a path counts as a loop (Linux's `ELOOP` limit).
const MAX_HOPS: usize = 40;
/// Nesting of directory links within directory links before it counts as a loop.
const MAX_DIR_DEPTH: usize = 16;

/// One member of an archive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Node {
    /// A regular file: data offset in the tar stream, size, first bytes.
    File {
        offset: u64,
        size: u64,
        head: Vec<u8>,
    },
    /// A directory (listed, or implied by a member below it).
    Dir,
    /// A hard link: the target's name, relative to the archive root.
    HardLink(String),
    /// A symbolic link: the target as written, relative to the link's folder.
    Symlink(String),
}

/// A file visible in the tree: its visible name and the name of the member holding its data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Visible {
    pub name: String,
    pub member: String,
}

/// Every member of an archive by normalised name (`a/b/c`, no `./`, no trailing `/`).
#[derive(Debug, Default)]
pub(crate) struct Namespace {
    pub nodes: BTreeMap<String, Node>,
}

/// `./a//b/` → `a/b`.
pub(crate) fn normalise(name: &str) -> String {
    name.split('/')
        .filter(|c| !c.is_empty() && *c != ".")
        .collect::<Vec<_>>()
        .join("/")
}

impl Namespace {
    /// Adds a member; its ancestors become implied folders.
    pub fn insert(&mut self, name: String, node: Node) {
        let mut end = 0;
        while let Some(pos) = name[end..].find('/') {
            end += pos;
            self.nodes
                .entry(name[..end].to_string())
                .or_insert(Node::Dir);
            end += 1;
        }
        self.nodes.insert(name, node);
    }

    /// The files visible under `prefix` (`""`: everywhere), links resolved, with the visible
    /// names relative to `prefix`. Hidden names (at any depth) are skipped before their links
    /// are resolved.
    pub fn visible_files(&self, archive: &Path, prefix: &str) -> Result<Vec<Visible>> {
        let mut out = Vec::new();
        for (name, node) in self.under(prefix) {
            let visible = relative_to(prefix, name).to_string();
            if is_hidden(&visible) {
                continue;
            }
            self.visit(archive, &visible, name, node, 0, &mut out)?;
        }
        Ok(out)
    }

    /// The members strictly under folder `dir` (all members when `dir` is empty).
    fn under<'a>(&'a self, dir: &str) -> impl Iterator<Item = (&'a String, &'a Node)> {
        let start = if dir.is_empty() {
            String::new()
        } else {
            format!("{dir}/")
        };
        self.nodes
            .range(start.clone()..)
            .take_while(move |(k, _)| k.starts_with(&start))
    }

    fn visit(
        &self,
        archive: &Path,
        visible: &str,
        real: &str,
        node: &Node,
        depth: usize,
        out: &mut Vec<Visible>,
    ) -> Result<()> {
        match node {
            Node::Dir => Ok(()),
            Node::File { .. } => {
                out.push(Visible {
                    name: visible.to_string(),
                    member: real.to_string(),
                });
                Ok(())
            }
            Node::HardLink(_) | Node::Symlink(_) => {
                let target = self.resolve(archive, real)?;
                match &self.nodes[&target] {
                    Node::Dir => self.expand_dir(archive, visible, real, &target, depth + 1, out),
                    _ => {
                        out.push(Visible {
                            name: visible.to_string(),
                            member: target,
                        });
                        Ok(())
                    }
                }
            }
        }
    }

    /// The members of folder `target` (reached through link `link`), seen under `visible`.
    fn expand_dir(
        &self,
        archive: &Path,
        visible: &str,
        link: &str,
        target: &str,
        depth: usize,
        out: &mut Vec<Visible>,
    ) -> Result<()> {
        if depth > MAX_DIR_DEPTH || link.starts_with(&format!("{target}/")) || target.is_empty() {
            return Err(link_error(
                archive,
                link,
                format!("a symbolic link loop (it leads back to its ancestor `{target}`)"),
            ));
        }
        for (name, node) in self.under(target) {
            if matches!(node, Node::Dir) {
                continue;
            }
            let below = format!("{visible}/{}", relative_to(target, name));
            if is_hidden(&below) {
                continue;
            }
            self.visit(archive, &below, name, node, depth, out)?;
        }
        Ok(())
    }

    /// The name of the file or folder that `name` finally refers to, following links in any
    /// component.
    pub fn resolve(&self, archive: &Path, name: &str) -> Result<String> {
        let mut done: Vec<String> = Vec::new();
        let mut todo: Vec<String> = components_reversed(name);
        let mut hops = 0;
        while let Some(c) = todo.pop() {
            if c == ".." {
                if done.pop().is_none() {
                    return Err(link_error(
                        archive,
                        name,
                        "a link that leads outside the archive",
                    ));
                }
                continue;
            }
            done.push(c);
            let current = done.join("/");
            let (target, from_root) = match self.nodes.get(&current) {
                Some(Node::Symlink(t)) => (t, false),
                Some(Node::HardLink(t)) => (t, true),
                Some(_) => continue,
                None => {
                    return Err(link_error(
                        archive,
                        name,
                        format!("a dangling link (`{current}` is not in the archive)"),
                    ));
                }
            };
            hops += 1;
            if hops > MAX_HOPS {
                return Err(link_error(
                    archive,
                    name,
                    "a link loop (too many levels of links)",
                ));
            }
            if target.starts_with('/') {
                return Err(link_error(
                    archive,
                    name,
                    format!("a link to the absolute path `{target}`, outside the archive"),
                ));
            }
            done.pop();
            if from_root {
                done.clear();
            }
            todo.extend(components_reversed(target));
        }
        Ok(done.join("/"))
    }
}

fn components_reversed(path: &str) -> Vec<String> {
    path.split('/')
        .filter(|c| !c.is_empty() && *c != ".")
        .rev()
        .map(String::from)
        .collect()
}

fn relative_to<'a>(dir: &str, name: &'a str) -> &'a str {
    if dir.is_empty() {
        name
    } else {
        &name[dir.len() + 1..]
    }
}

fn link_error(archive: &Path, member: &str, reason: impl Into<String>) -> Error {
    Error::Link {
        path: PathBuf::from(format!("{}!{member}", archive.display())),
        reason: reason.into(),
    }
}
