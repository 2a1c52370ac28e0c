//! What an unpack has created so far, as plain values: the rules that decide whether
//! an entry may be created, and where a symlink resolves. Pure — it must not touch
//! the filesystem; [`super::unpack`] does what this allows.
//!
//! The rules, which together mean unpacking never writes through a symlink and
//! nothing in the result points outside it:
//! - a path is relative, without `..`, at most `max_path` bytes, each name at most
//!   255 bytes ([`normalize`]);
//! - every parent of an entry is a directory this unpack made (or makes now): never a
//!   symlink, never a file ([`Tree::add`]);
//! - a path is created once (a directory may be named again);
//! - a hard link names a regular file unpacked before it ([`Tree::hard_link_target`]);
//! - every symlink resolves inside the root when followed through the final tree,
//!   symlink to symlink, with at most [`MAX_HOPS`] levels ([`Tree::check_symlinks`]);
//! - names and link targets kept in memory are bounded (`max_meta` bytes); the tree is
//!   an arena of entries with parent links, and a symlink resolves to an entry (plus a
//!   count of absent names below it), so checking every link costs memory per link
//!   independent of how long the paths it resolves to are.

use std::collections::HashMap;
use std::ffi::{OsStr, OsString};
use std::path::{Component, Path, PathBuf};

/// Longest name of one path component (Linux `NAME_MAX`).
pub(crate) const MAX_NAME: usize = 255;
/// Most symlinks followed while resolving one (Linux gives up at 40 too).
pub(crate) const MAX_HOPS: u32 = 40;

/// A path for messages: lossy UTF-8, cut to 160 bytes.
pub(crate) fn show(path: &Path) -> String {
    let mut s = path.to_string_lossy().into_owned();
    if s.len() > 160 {
        let mut end = 157;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
        s.push_str("...");
    }
    format!("{s:?}")
}

/// The relative path an entry creates (empty for the root itself), or why it is
/// refused.
pub(crate) fn normalize(raw: &Path, max_path: usize) -> Result<PathBuf, String> {
    let len = raw.as_os_str().len();
    if len > max_path {
        return Err(format!(
            "entry {} has a path of {len} bytes (the limit is {max_path})",
            show(raw)
        ));
    }
    let mut out = PathBuf::new();
    for c in raw.components() {
        match c {
            Component::Normal(p) if p.len() > MAX_NAME => {
                return Err(format!(
                    "entry {} has a name longer than {MAX_NAME} bytes",
                    show(raw)
                ));
            }
            Component::Normal(p) => out.push(p),
            Component::CurDir => {}
            Component::ParentDir => {
                return Err(format!("entry {} has a '..' component", show(raw)));
            }
            Component::RootDir | Component::Prefix(_) => {
                return Err(format!("entry {} is an absolute path", show(raw)));
            }
        }
    }
    Ok(out)
}

/// What an entry asks to create.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Node {
    Dir,
    /// A regular file (or another name of one: a hard link).
    File,
    /// A symlink and its target as written.
    Symlink(PathBuf),
}

/// What [`Tree::add`] decided.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Added {
    /// Parent directories to create first, outermost first.
    pub parents: Vec<PathBuf>,
    /// The path is a directory already (named again): nothing to create.
    pub existed: bool,
}

/// Index of an entry in [`Tree::entries`]; the root is 0.
type Id = usize;
const ROOT: Id = 0;

enum Kind {
    Dir(HashMap<OsString, Id>),
    File,
    Symlink(PathBuf),
}

struct Entry {
    parent: Id,
    name: OsString,
    kind: Kind,
}

/// Where a walk through the tree is: an entry, and how many names below it that do
/// not exist (taken as written, like directories).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Place {
    at: Id,
    absent: usize,
}

enum Resolution {
    InProgress,
    Done(Place),
}

/// The tree as an arena: memory per entry is its name (bounded in total by
/// `max_meta`) and a few words, whatever its links say.
pub(crate) struct Tree {
    entries: Vec<Entry>,
    /// Symlinks in the order they came, for the final check.
    symlinks: Vec<Id>,
    meta: u64,
    max_meta: u64,
}

impl Tree {
    pub(crate) fn new(max_meta: u64) -> Tree {
        Tree {
            entries: vec![Entry {
                parent: ROOT,
                name: OsString::new(),
                kind: Kind::Dir(HashMap::new()),
            }],
            symlinks: Vec::new(),
            meta: 0,
            max_meta,
        }
    }

    fn child(&self, dir: Id, name: &OsStr) -> Option<Id> {
        match &self.entries[dir].kind {
            Kind::Dir(children) => children.get(name).copied(),
            _ => None,
        }
    }

    /// The path of an entry (for messages).
    fn path(&self, mut id: Id) -> PathBuf {
        let mut names = Vec::new();
        while id != ROOT {
            names.push(self.entries[id].name.as_os_str());
            id = self.entries[id].parent;
        }
        names.iter().rev().collect()
    }

    fn insert(&mut self, parent: Id, name: &OsStr, kind: Kind) -> Id {
        let id = self.entries.len();
        self.entries.push(Entry {
            parent,
            name: name.to_owned(),
            kind,
        });
        if let Kind::Dir(children) = &mut self.entries[parent].kind {
            children.insert(name.to_owned(), id);
        }
        id
    }

    /// Records `node` at `rel` (normalized, not empty) if the rules allow it; the
    /// missing parents are recorded as directories too.
    pub(crate) fn add(&mut self, rel: &Path, node: Node) -> Result<Added, String> {
        let names: Vec<&OsStr> = rel.iter().collect();
        let Some((last, dirs)) = names.split_last() else {
            return Err("an empty path".into());
        };
        let mut at = ROOT;
        let mut prefix = PathBuf::new();
        let mut missing = Vec::new();
        for name in dirs {
            prefix.push(name);
            if !missing.is_empty() {
                missing.push(prefix.clone());
                continue;
            }
            match self.child(at, name).map(|id| (id, &self.entries[id].kind)) {
                Some((id, Kind::Dir(_))) => at = id,
                Some((_, Kind::Symlink(_))) => {
                    return Err(format!(
                        "entry {}: its parent {} is a symlink (nothing is written through one)",
                        show(rel),
                        show(&prefix)
                    ));
                }
                Some((_, Kind::File)) => {
                    return Err(format!(
                        "entry {}: its parent {} is a file",
                        show(rel),
                        show(&prefix)
                    ));
                }
                None => missing.push(prefix.clone()),
            }
        }
        if missing.is_empty() {
            match (self.child(at, last).map(|id| &self.entries[id].kind), &node) {
                (Some(Kind::Dir(_)), Node::Dir) => {
                    return Ok(Added {
                        parents: Vec::new(),
                        existed: true,
                    });
                }
                (Some(_), _) => return Err(format!("entry {} appears twice", show(rel))),
                (None, _) => {}
            }
        }
        let target_len = match &node {
            Node::Symlink(t) => t.as_os_str().len(),
            _ => 0,
        };
        let names_len: usize = names[names.len() - 1 - missing.len()..]
            .iter()
            .map(|n| n.len())
            .sum();
        self.charge(names_len + target_len)?;
        for name in &dirs[dirs.len() - missing.len()..] {
            at = self.insert(at, name, Kind::Dir(HashMap::new()));
        }
        let kind = match node {
            Node::Dir => Kind::Dir(HashMap::new()),
            Node::File => Kind::File,
            Node::Symlink(t) => Kind::Symlink(t),
        };
        let is_link = matches!(kind, Kind::Symlink(_));
        let id = self.insert(at, last, kind);
        if is_link {
            self.symlinks.push(id);
        }
        Ok(Added {
            parents: missing,
            existed: false,
        })
    }

    fn charge(&mut self, bytes: usize) -> Result<(), String> {
        self.meta = self.meta.saturating_add(bytes as u64);
        if self.meta > self.max_meta {
            return Err(format!(
                "more than {} bytes of names and link targets",
                self.max_meta
            ));
        }
        Ok(())
    }

    /// The normalized target of a hard link at `entry`: it must name a regular file
    /// unpacked before it (the name taken literally: through directories only).
    pub(crate) fn hard_link_target(
        &self,
        entry: &Path,
        target: &Path,
        max_path: usize,
    ) -> Result<PathBuf, String> {
        let why = |what: &str| format!("hard link {} -> {} {what}", show(entry), show(target));
        let rel = normalize(target, max_path)
            .map_err(|_| why("does not name a path inside the archive"))?;
        let mut at = Some(ROOT);
        for name in rel.iter() {
            at = at.and_then(|dir| self.child(dir, name));
        }
        match at.map(|id| &self.entries[id].kind) {
            Some(Kind::File) => Ok(rel),
            Some(_) => Err(why("does not point at a regular file")),
            None => Err(why("does not point at a file unpacked before it")),
        }
    }

    /// Every symlink, followed through the tree, stays inside the root. Checked once
    /// the tree is complete, so a later entry cannot change what an earlier link means.
    pub(crate) fn check_symlinks(&self) -> Result<(), String> {
        let mut memo = HashMap::new();
        for id in &self.symlinks {
            self.resolve(*id, &mut memo, 0)?;
        }
        Ok(())
    }

    /// Where the symlink at `link` leads (relative to the root), following symlinks as
    /// the kernel would; absent names are taken as written.
    #[cfg(test)]
    pub(crate) fn resolve_link(&self, link: &Path) -> Result<PathBuf, String> {
        let mut at = ROOT;
        for name in link.iter() {
            at = self.child(at, name).ok_or("no such entry")?;
        }
        let place = self.resolve(at, &mut HashMap::new(), 0)?;
        let mut p = self.path(place.at);
        for _ in 0..place.absent {
            p.push("?");
        }
        Ok(p)
    }

    fn resolve(
        &self,
        link: Id,
        memo: &mut HashMap<Id, Resolution>,
        depth: u32,
    ) -> Result<Place, String> {
        let Kind::Symlink(target) = &self.entries[link].kind else {
            return Ok(Place {
                at: link,
                absent: 0,
            });
        };
        let looped = || {
            format!(
                "symlink {} -> {}: too many levels of symlinks",
                show(&self.path(link)),
                show(target)
            )
        };
        match memo.get(&link) {
            Some(Resolution::Done(p)) => return Ok(*p),
            Some(Resolution::InProgress) => return Err(looped()),
            None => {}
        }
        if depth >= MAX_HOPS {
            return Err(looped());
        }
        memo.insert(link, Resolution::InProgress);
        let outside = || {
            format!(
                "symlink {} -> {} points outside the directory",
                show(&self.path(link)),
                show(target)
            )
        };
        // The link's parent is a directory (never a symlink): the walk starts there.
        let mut place = Place {
            at: self.entries[link].parent,
            absent: 0,
        };
        for c in target.components() {
            match c {
                Component::RootDir | Component::Prefix(_) => return Err(outside()),
                Component::CurDir => {}
                Component::ParentDir if place.absent > 0 => place.absent -= 1,
                Component::ParentDir if place.at == ROOT => return Err(outside()),
                Component::ParentDir => place.at = self.entries[place.at].parent,
                Component::Normal(_) if place.absent > 0 => place.absent += 1,
                Component::Normal(name) => match self.child(place.at, name) {
                    None => place.absent = 1,
                    Some(id) => place = self.resolve(id, memo, depth + 1)?,
                },
            }
        }
        memo.insert(link, Resolution::Done(place));
        Ok(place)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> PathBuf {
        PathBuf::from(s)
    }

    fn tree(entries: &[(&str, Option<&str>)]) -> Result<Tree, String> {
        let mut t = Tree::new(1 << 20);
        for (path, link) in entries {
            let node = match link {
                Some(l) => Node::Symlink(p(l)),
                None if path.ends_with('/') => Node::Dir,
                None => Node::File,
            };
            t.add(&normalize(Path::new(path), 4096)?, node)?;
        }
        Ok(t)
    }

    #[test]
    fn normalizing() {
        assert_eq!(normalize(Path::new("./a//b/"), 100).unwrap(), p("a/b"));
        assert_eq!(normalize(Path::new("./"), 100).unwrap(), p(""));
        let e = normalize(Path::new("a/../../x"), 100).unwrap_err();
        assert_eq!(e, r#"entry "a/../../x" has a '..' component"#);
        let e = normalize(Path::new("/etc/passwd"), 100).unwrap_err();
        assert_eq!(e, r#"entry "/etc/passwd" is an absolute path"#);
        let long = "a/".repeat(60);
        let e = normalize(Path::new(&long), 100).unwrap_err();
        assert!(e.contains("a path of 120 bytes (the limit is 100)"), "{e}");
        let name = "n".repeat(256);
        let e = normalize(Path::new(&name), 4096).unwrap_err();
        assert!(e.contains("a name longer than 255 bytes"), "{e}");
        assert!(show(Path::new(&name)).ends_with("...\""));
    }

    #[test]
    fn parents_are_created_and_must_be_directories() {
        let mut t = Tree::new(1 << 20);
        let a = t.add(Path::new("a/b/c"), Node::File).unwrap();
        assert_eq!(a.parents, vec![p("a"), p("a/b")]);
        assert!(!a.existed);
        assert!(t.add(Path::new("a/b"), Node::Dir).unwrap().existed);
        let e = t.add(Path::new("a/b/c/d"), Node::File).unwrap_err();
        assert_eq!(e, r#"entry "a/b/c/d": its parent "a/b/c" is a file"#);
        let e = t.add(Path::new("a/b/c"), Node::File).unwrap_err();
        assert_eq!(e, r#"entry "a/b/c" appears twice"#);
        t.add(Path::new("d"), Node::Symlink(p("."))).unwrap();
        let e = t.add(Path::new("d/d/d/x"), Node::File).unwrap_err();
        assert_eq!(
            e,
            r#"entry "d/d/d/x": its parent "d" is a symlink (nothing is written through one)"#
        );
        let e = t.add(Path::new("d"), Node::Dir).unwrap_err();
        assert!(e.contains("appears twice"), "{e}");
    }

    #[test]
    fn symlinks_resolve_through_the_final_tree() {
        let ok = tree(&[
            ("usr/lib/libx.so.1", None),
            ("lib", Some("usr/lib")),
            ("libx.so", Some("lib/libx.so.1")),
            ("usr/bin/x", Some("../lib/libx.so.1")),
            ("dangling", Some("no/such/thing")),
            ("self", Some(".")),
        ])
        .unwrap();
        ok.check_symlinks().unwrap();
        assert_eq!(
            ok.resolve_link(Path::new("libx.so")).unwrap(),
            p("usr/lib/libx.so.1")
        );
        assert_eq!(ok.resolve_link(Path::new("self")).unwrap(), p(""));

        let refused =
            |entries: &[(&str, Option<&str>)]| tree(entries).unwrap().check_symlinks().unwrap_err();
        // Absolute.
        let e = refused(&[("etc", Some("/etc"))]);
        assert_eq!(e, r#"symlink "etc" -> "/etc" points outside the directory"#);
        // Lexically out.
        let e = refused(&[("a/up", Some("../../evil"))]);
        assert!(e.contains("points outside"), "{e}");
        // Symlink to a symlink: b -> .. (the root), c -> a/b/.. leaves it although the
        // text `a/b/..` alone looks like it stays in `a`.
        let e = refused(&[("a/b", Some("..")), ("c", Some("a/b/.."))]);
        assert_eq!(e, r#"symlink "c" -> "a/b/.." points outside the directory"#);
        // A chain of hops, each harmless on its own.
        let e = refused(&[
            ("x/y/z", None),
            ("x/l1", Some("..")),
            ("x/y/l2", Some("../l1/..")),
        ]);
        assert!(e.contains(r#""x/y/l2""#) && e.contains("outside"), "{e}");
        // `d -> .`: `d/d/d/../..` reads as one level down, and is one level up.
        let e = refused(&[("d", Some(".")), ("x", Some("d/d/d/../.."))]);
        assert_eq!(
            e,
            r#"symlink "x" -> "d/d/d/../.." points outside the directory"#
        );
        // A later entry cannot rescue or spoil an earlier one: checked on the final tree.
        let e = refused(&[("m", Some("n/../..")), ("n", Some("."))]);
        assert!(e.contains(r#""m""#), "{e}");
        // Loops.
        let e = refused(&[("a", Some("b")), ("b", Some("a"))]);
        assert!(e.contains("too many levels of symlinks"), "{e}");
        let e = refused(&[("s", Some("s/x"))]);
        assert!(e.contains("too many levels"), "{e}");
    }

    #[test]
    fn hard_links_name_earlier_regular_files() {
        let t = tree(&[("bin/app", None), ("lib/", None), ("l", Some("bin/app"))]).unwrap();
        assert_eq!(
            t.hard_link_target(Path::new("h"), Path::new("./bin/app"), 4096)
                .unwrap(),
            p("bin/app")
        );
        for (target, why) in [
            ("../etc/passwd", "does not name a path inside the archive"),
            ("/etc/passwd", "does not name a path inside the archive"),
            ("lib", "does not point at a regular file"),
            ("l", "does not point at a regular file"),
            ("later", "does not point at a file unpacked before it"),
        ] {
            let e = t
                .hard_link_target(Path::new("h"), Path::new(target), 4096)
                .unwrap_err();
            assert!(
                e.starts_with(r#"hard link "h" -> "#) && e.ends_with(why),
                "{e}"
            );
        }
    }

    #[test]
    fn many_links_to_a_long_path_cost_little() {
        // 50 000 one-byte links to a link to a 2 KiB path: each resolves to an entry,
        // not to a copy of the path.
        let mut t = Tree::new(16 << 20);
        let long = format!("{}x", "d/".repeat(1000));
        t.add(Path::new(&long), Node::File).unwrap();
        t.add(Path::new("l"), Node::Symlink(p(&long))).unwrap();
        for i in 0..50_000 {
            t.add(&p(&format!("s{i}")), Node::Symlink(p("l"))).unwrap();
        }
        t.check_symlinks().unwrap();
        assert_eq!(t.resolve_link(Path::new("s7")).unwrap(), p(&long));
        // A chain longer than the kernel follows is refused.
        let mut t = Tree::new(1 << 20);
        for i in 0..=MAX_HOPS {
            t.add(
                &p(&format!("c{i}")),
                Node::Symlink(p(&format!("c{}", i + 1))),
            )
            .unwrap();
        }
        let e = t.check_symlinks().unwrap_err();
        assert!(e.contains("too many levels of symlinks"), "{e}");
    }

    #[test]
    fn names_kept_in_memory_are_bounded() {
        let mut t = Tree::new(100);
        t.add(&p(&"a".repeat(60)), Node::File).unwrap();
        let e = t.add(&p(&"b".repeat(60)), Node::File).unwrap_err();
        assert_eq!(e, "more than 100 bytes of names and link targets");
    }
}
