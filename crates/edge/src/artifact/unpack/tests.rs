//! Unit tests of unpacking: archives made by the `tar` crate and by GNU tar unpack
//! as they should; every attack is refused with its precise reason, leaving no `DIR`,
//! no `DIR.tmp` and nothing at the path outside it that the attack aimed at. The
//! hostile archives are written block by block here (tar writers refuse to make them).

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use super::*;

// ---- archives written by hand ----

/// A POSIX ustar header block, checksummed. `size` over the octal range is written in
/// GNU base-256.
fn header(name: &[u8], kind: u8, size: u64, link: &[u8], mode: u32) -> Vec<u8> {
    let mut h = vec![0u8; 512];
    h[..name.len()].copy_from_slice(name);
    h[100..108].copy_from_slice(format!("{mode:07o}\0").as_bytes());
    h[108..116].copy_from_slice(b"0000000\0");
    h[116..124].copy_from_slice(b"0000000\0");
    if size < 0o77777777777 {
        h[124..136].copy_from_slice(format!("{size:011o}\0").as_bytes());
    } else {
        h[124] = 0x80;
        h[128..136].copy_from_slice(&size.to_be_bytes());
    }
    h[136..148].copy_from_slice(b"00000000000\0");
    h[156] = kind;
    h[157..157 + link.len()].copy_from_slice(link);
    h[257..263].copy_from_slice(b"ustar\0");
    h[263..265].copy_from_slice(b"00");
    h[148..156].copy_from_slice(b"        ");
    let sum: u32 = h.iter().map(|b| u32::from(*b)).sum();
    h[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
    h
}

fn padded(data: &[u8]) -> Vec<u8> {
    let mut v = data.to_vec();
    v.resize(data.len().div_ceil(512) * 512, 0);
    v
}

fn file(name: &str, data: &[u8]) -> Vec<u8> {
    [
        header(name.as_bytes(), b'0', data.len() as u64, b"", 0o644),
        padded(data),
    ]
    .concat()
}

fn dir(name: &str) -> Vec<u8> {
    header(name.as_bytes(), b'5', 0, b"", 0o755)
}

fn symlink(name: &str, target: &str) -> Vec<u8> {
    header(name.as_bytes(), b'2', 0, target.as_bytes(), 0o777)
}

fn hard_link(name: &str, target: &str) -> Vec<u8> {
    header(name.as_bytes(), b'1', 0, target.as_bytes(), 0o644)
}

/// A GNU long-name (`L`) or long-link (`K`) header carrying `value`.
fn gnu_long(kind: u8, value: &[u8]) -> Vec<u8> {
    let mut data = value.to_vec();
    data.push(0);
    [
        header(b"././@LongLink", kind, data.len() as u64, b"", 0o644),
        padded(&data),
    ]
    .concat()
}

/// A PAX extended header (`x`) with `records`.
fn pax(records: &[(&str, &[u8])]) -> Vec<u8> {
    let mut data = Vec::new();
    for (k, v) in records {
        let body = 1 + k.len() + 1 + v.len() + 1; // ' ' k '=' v '\n'
        let mut len = body + 1;
        while len != body + len.to_string().len() {
            len = body + len.to_string().len();
        }
        data.extend_from_slice(format!("{len} {k}=").as_bytes());
        data.extend_from_slice(v);
        data.push(b'\n');
    }
    [
        header(b"PaxHeaders/x", b'x', data.len() as u64, b"", 0o644),
        padded(&data),
    ]
    .concat()
}

/// The entries, then the end-of-archive marker.
fn archive(parts: &[Vec<u8>]) -> Vec<u8> {
    let mut v = parts.concat();
    v.extend_from_slice(&[0u8; 1024]);
    v
}

fn gzip(data: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

/// A scratch dir with the archive at `a.tar` and the unpack dir at `sub/out`.
struct Case {
    tmp: tempfile::TempDir,
    archive: PathBuf,
    dir: PathBuf,
}

impl Case {
    fn new(data: &[u8]) -> Case {
        let tmp = tempfile::tempdir().unwrap();
        let archive = tmp.path().join("a.tar");
        std::fs::write(&archive, data).unwrap();
        let dir = tmp.path().join("sub").join("out");
        std::fs::create_dir_all(dir.parent().unwrap()).unwrap();
        Case { tmp, archive, dir }
    }

    /// `path` under the scratch dir, outside `dir`.
    fn outside(&self, path: &str) -> PathBuf {
        self.tmp.path().join(path)
    }

    /// Unpacks, expecting a refusal; returns its message after checking that nothing
    /// is left: no `dir`, no `dir.tmp`, nothing (not even a dangling symlink) at the
    /// usual targets outside.
    fn refused(&self, limits: UnpackLimits) -> String {
        let err = unpack_with_limits(&self.archive, &self.dir, limits).unwrap_err();
        let message = match &err {
            Error::UnsafeArchive { path, message } => {
                assert_eq!(path, &self.archive);
                message.clone()
            }
            other => panic!("expected a refusal, got {other:?}"),
        };
        assert!(!self.dir.exists(), "{message}");
        assert!(!tmp_dir(&self.dir).exists(), "{message}");
        for p in ["evil", "sub/evil", "target"] {
            assert_gone(&self.outside(p));
        }
        message
    }
}

/// Nothing at `path`: no file, no directory, no symlink.
fn assert_gone(path: &Path) {
    assert!(
        std::fs::symlink_metadata(path).is_err(),
        "{} was created",
        path.display()
    );
}

fn refused(data: Vec<u8>) -> String {
    Case::new(&data).refused(UnpackLimits::default())
}

// ---- what must unpack ----

fn sample_tar() -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for (path, data, mode) in [
        ("bin/app", &b"#!/bin/sh\necho hi\n"[..], 0o755),
        ("etc/app.conf", b"port = 8080\n", 0o644),
    ] {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(mode);
        h.set_entry_type(tar::EntryType::Regular);
        b.append_data(&mut h, path, data).unwrap();
    }
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(tar::EntryType::Symlink);
    h.set_size(0);
    b.append_link(&mut h, "bin/run", "app").unwrap();
    b.into_inner().unwrap()
}

fn check_sample(dir: &Path) {
    assert_eq!(
        std::fs::read(dir.join("bin/app")).unwrap(),
        b"#!/bin/sh\necho hi\n"
    );
    assert_eq!(
        std::fs::read_to_string(dir.join("etc/app.conf")).unwrap(),
        "port = 8080\n"
    );
    let mode = std::fs::metadata(dir.join("bin/app"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o111, 0o111, "executable bit kept: {mode:o}");
    assert_eq!(
        std::fs::read_link(dir.join("bin/run")).unwrap(),
        Path::new("app")
    );
}

#[test]
fn unpacks_tar() {
    let c = Case::new(&sample_tar());
    unpack(&c.archive, &c.dir).unwrap();
    check_sample(&c.dir);
    assert!(!tmp_dir(&c.dir).exists());
}

#[test]
fn unpacks_tar_gz_whatever_its_name() {
    let tmp = tempfile::tempdir().unwrap();
    // Named like a zip: detection is by content.
    let archive = tmp.path().join("a.zip");
    std::fs::write(&archive, gzip(&sample_tar())).unwrap();
    let dir = tmp.path().join("out");
    unpack(&archive, &dir).unwrap();
    check_sample(&dir);
}

#[test]
fn replaces_an_existing_dir_and_a_stale_tmp() {
    let c = Case::new(&sample_tar());
    std::fs::create_dir_all(&c.dir).unwrap();
    std::fs::write(c.dir.join("old-file"), "x").unwrap();
    std::fs::create_dir_all(tmp_dir(&c.dir)).unwrap();
    std::fs::write(tmp_dir(&c.dir).join("half"), "x").unwrap();
    unpack(&c.archive, &c.dir).unwrap();
    check_sample(&c.dir);
    assert!(!c.dir.join("old-file").exists());
    assert!(!tmp_dir(&c.dir).exists());
}

/// What GNU tar makes of a real tree, in its own format and in POSIX pax: long names
/// (GNU `L`/`K`, PAX `path`/`linkpath`), a hard link, symlinks to a file and to a
/// directory inside, `./` prefixes.
#[test]
fn unpacks_what_gnu_tar_writes() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    let deep = src.join("a".repeat(60)).join("b".repeat(60));
    std::fs::create_dir_all(&deep).unwrap();
    std::fs::write(deep.join("long-file.txt"), "deep").unwrap();
    std::fs::create_dir_all(src.join("bin")).unwrap();
    std::fs::write(src.join("bin/app"), "#!/bin/sh\n").unwrap();
    std::fs::set_permissions(src.join("bin/app"), std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::hard_link(src.join("bin/app"), src.join("bin/app-hard")).unwrap();
    std::os::unix::fs::symlink("bin", src.join("b")).unwrap();
    let long_target = format!("{}/{}/long-file.txt", "a".repeat(60), "b".repeat(60));
    std::os::unix::fs::symlink(&long_target, src.join("deep-link")).unwrap();
    for format in ["gnu", "pax"] {
        let archive = tmp.path().join(format!("{format}.tar.gz"));
        let st = Command::new("tar")
            .arg(format!("--format={format}"))
            .arg("-czf")
            .arg(&archive)
            .arg("-C")
            .arg(&src)
            .arg(".")
            .status()
            .unwrap();
        assert!(st.success());
        let out = tmp.path().join(format!("out-{format}"));
        unpack(&archive, &out).unwrap();
        assert_eq!(
            std::fs::read_to_string(out.join(&long_target)).unwrap(),
            "deep"
        );
        assert_eq!(
            std::fs::read_to_string(out.join("deep-link")).unwrap(),
            "deep"
        );
        assert_eq!(std::fs::read_link(out.join("b")).unwrap(), Path::new("bin"));
        let app = std::fs::metadata(out.join("bin/app")).unwrap();
        let hard = std::fs::metadata(out.join("bin/app-hard")).unwrap();
        assert_eq!(app.ino(), hard.ino(), "{format}: a hard link, not a copy");
        assert_eq!(app.mode() & 0o777, 0o755);
    }
}

#[test]
fn modes_are_capped_at_0755() {
    let c = Case::new(&archive(&[
        [header(b"suid", b'0', 1, b"", 0o6777), padded(b"x")].concat(),
        header(b"shared/", b'5', 0, b"", 0o1777),
    ]));
    unpack(&c.archive, &c.dir).unwrap();
    let mode = |p: &str| std::fs::metadata(c.dir.join(p)).unwrap().mode() & 0o7777;
    assert_eq!(mode("suid"), 0o755);
    assert_eq!(mode("shared"), 0o755);
}

#[test]
fn not_an_archive() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("out");
    for (name, data) in [
        ("text.tar", b"hello, this is not a tar archive".repeat(40)),
        ("empty.tar.gz", Vec::new()),
        (
            "gzipped-text.tgz",
            gzip(&b"just text, compressed".repeat(40)),
        ),
        ("short", vec![0x1f]),
    ] {
        let archive = tmp.path().join(name);
        std::fs::write(&archive, &data).unwrap();
        let err = unpack(&archive, &dir).unwrap_err();
        assert!(
            matches!(&err, Error::NotAnArchive { path } if path == &archive),
            "{name}: {err}"
        );
        assert!(
            err.to_string().contains("not a tar or tar.gz archive"),
            "{err}"
        );
        assert!(!dir.exists() && !tmp_dir(&dir).exists());
    }
}

// ---- paths ----

#[test]
fn path_traversal_is_refused() {
    let ok_then = |bad: Vec<u8>| archive(&[file("fine", b"ok"), bad]);
    assert_eq!(
        refused(ok_then(file("../evil", b"evil"))),
        r#"entry "../evil" has a '..' component"#
    );
    assert_eq!(
        refused(ok_then(file("a/../../sub/evil", b"evil"))),
        r#"entry "a/../../sub/evil" has a '..' component"#
    );
    let c = Case::new(&[]);
    let abs = c.outside("evil");
    std::fs::write(&c.archive, archive(&[file(abs.to_str().unwrap(), b"evil")])).unwrap();
    assert_eq!(
        c.refused(UnpackLimits::default()),
        format!("entry {:?} is an absolute path", abs.to_str().unwrap())
    );
    assert_eq!(
        refused(archive(&[file(".verge-ready", b"x")])),
        r#"entry ".verge-ready" is reserved for the node's ready marker"#
    );
    assert_eq!(
        refused(archive(&[symlink("./.verge-ready", "x")])),
        r#"entry ".verge-ready" is reserved for the node's ready marker"#
    );
}

#[test]
fn a_path_too_long_is_refused() {
    let name = format!("{}/x", "p".repeat(2998));
    let expected = format!(
        "entry {} has a path of 3000 bytes (the limit is 2048)",
        show(Path::new(&name))
    );
    // As a GNU long name and as a PAX path.
    assert_eq!(
        refused(archive(&[
            gnu_long(b'L', name.as_bytes()),
            file("short", b"x")
        ])),
        expected
    );
    assert_eq!(
        refused(archive(&[
            pax(&[("path", name.as_bytes())]),
            file("short", b"x")
        ])),
        expected
    );
    // A link target.
    let target = "t/".repeat(1500);
    assert_eq!(
        refused(archive(&[
            pax(&[("linkpath", target.as_bytes())]),
            symlink("l", "")
        ])),
        r#"symlink "l" has a target of 3000 bytes (the limit is 2048)"#
    );
}

// ---- links ----

/// The attack found on the edge: `d -> .`, then `d/d/…/d/x -> ../../…/TMP/target`
/// with as many `d` as `..`. Read as text the link stays inside; through `d` its
/// parent is the root, and its `..` climb to `/`.
#[test]
fn a_symlink_chain_through_a_dot_link_is_refused() {
    let c = Case::new(&[]);
    let target = c.outside("target");
    let depth = 40;
    let entry = format!("{}x", "d/".repeat(depth));
    let link = format!(
        "{}{}",
        "../".repeat(depth),
        target.to_str().unwrap().trim_start_matches('/')
    );
    std::fs::write(
        &c.archive,
        archive(&[
            symlink("d", "."),
            pax(&[("linkpath", link.as_bytes())]),
            symlink(&entry, ""),
            // What `install` would then have written through it.
            file(&format!("{}.verge-ready", "d/".repeat(depth)), b"sha"),
        ]),
    )
    .unwrap();
    assert_eq!(
        c.refused(UnpackLimits::default()),
        format!(r#"entry "{entry}": its parent "d" is a symlink (nothing is written through one)"#)
    );
    assert_gone(&target);
}

#[test]
fn an_absolute_symlink_is_refused() {
    let c = Case::new(&[]);
    let target = c.outside("evil");
    let t = target.to_str().unwrap();
    std::fs::write(
        &c.archive,
        archive(&[symlink("etc", t), file("etc/passwd", b"root::0:0")]),
    )
    .unwrap();
    assert_eq!(
        c.refused(UnpackLimits::default()),
        format!(r#"symlink "etc" -> {t:?} points outside the directory"#)
    );
}

#[test]
fn a_symlink_to_a_symlink_escaping_is_refused() {
    // `a/b -> ..` is the root; `c -> a/b/../evil` is then `sub/evil`, outside, though
    // the text `a/b/../evil` stays in `a`.
    assert_eq!(
        refused(archive(&[
            dir("a/"),
            symlink("a/b", ".."),
            symlink("c", "a/b/../evil"),
        ])),
        r#"symlink "c" -> "a/b/../evil" points outside the directory"#
    );
    // Plainly out, and a loop.
    assert_eq!(
        refused(archive(&[symlink("a/up", "../../evil")])),
        r#"symlink "a/up" -> "../../evil" points outside the directory"#
    );
    assert_eq!(
        refused(archive(&[symlink("x", "y"), symlink("y", "x")])),
        r#"symlink "x" -> "y": too many levels of symlinks"#
    );
}

#[test]
fn writing_through_a_symlinked_directory_is_refused() {
    // Even to a directory inside.
    assert_eq!(
        refused(archive(&[
            dir("real/"),
            symlink("s", "real"),
            file("s/f", b"x")
        ])),
        r#"entry "s/f": its parent "s" is a symlink (nothing is written through one)"#
    );
    // And out: `up -> ../..` is the scratch dir.
    assert_eq!(
        refused(archive(&[symlink("up", "../.."), file("up/evil", b"x")])),
        r#"entry "up/evil": its parent "up" is a symlink (nothing is written through one)"#
    );
    // A file over a symlink (a write through the last name).
    assert_eq!(
        refused(archive(&[symlink("x", "../../evil"), file("x", b"x")])),
        r#"entry "x" appears twice"#
    );
    assert_eq!(
        refused(archive(&[file("f", b"x"), file("f/g", b"x")])),
        r#"entry "f/g": its parent "f" is a file"#
    );
}

#[test]
fn hard_links_must_name_an_earlier_regular_file() {
    let cases = [
        (
            hard_link("h", "../evil"),
            "\"../evil\" does not name a path inside the archive",
        ),
        (
            hard_link("h", "/etc/passwd"),
            "\"/etc/passwd\" does not name a path inside the archive",
        ),
        (
            [symlink("l", "f"), file("f", b"x"), hard_link("h", "l")].concat(),
            "\"l\" does not point at a regular file",
        ),
        (
            [symlink("s", "../.."), hard_link("h", "s/evil")].concat(),
            "\"s/evil\" does not point at a file unpacked before it",
        ),
        (
            [hard_link("h", "later"), file("later", b"x")].concat(),
            "\"later\" does not point at a file unpacked before it",
        ),
    ];
    for (entries, why) in cases {
        assert_eq!(
            refused(archive(&[entries])),
            format!(r#"hard link "h" -> {why}"#)
        );
    }
    // One to an earlier file is the same file.
    let c = Case::new(&archive(&[
        file("bin/app", b"x"),
        hard_link("bin/app2", "bin/app"),
    ]));
    unpack(&c.archive, &c.dir).unwrap();
    let ino = |p: &str| std::fs::metadata(c.dir.join(p)).unwrap().ino();
    assert_eq!(ino("bin/app"), ino("bin/app2"));
}

// ---- entry types ----

#[test]
fn devices_fifos_and_other_types_are_refused() {
    for (kind, name, why) in [
        (b'3', "dev/null", "is a character device"),
        (b'4', "dev/sda", "is a block device"),
        (b'6', "pipe", "is a FIFO"),
        (b'S', "sparse", "is a GNU sparse file"),
        (b'V', "volume", "has an unsupported type ('V')"),
    ] {
        assert_eq!(
            refused(archive(&[header(name.as_bytes(), kind, 0, b"", 0o644)])),
            format!("entry {name:?} {why}")
        );
    }
    assert_eq!(
        refused(archive(&[
            pax(&[("GNU.sparse.map", b"0,1")]),
            file("f", b"x")
        ])),
        "header 1: a GNU sparse file (not supported)"
    );
}

// ---- bounds ----

/// A GNU long-name header that claims 2 GiB: refused from its 512 bytes, before any
/// of it is read or allocated (the `tar` crate read the whole name into memory first).
#[test]
fn a_long_name_bomb_is_refused_before_allocating() {
    let mut bomb = header(b"././@LongLink", b'L', 2 << 30, b"", 0o644);
    bomb.extend(vec![0u8; 1 << 20]);
    assert_eq!(
        refused(bomb.clone()),
        "header 1: a GNU long-name header of 2147483648 bytes (the limit is 4096)"
    );
    bomb[156] = b'K';
    let sum: u32 = bomb[..512]
        .iter()
        .enumerate()
        .map(|(i, b)| {
            if (148..156).contains(&i) {
                32
            } else {
                u32::from(*b)
            }
        })
        .sum();
    bomb[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
    assert_eq!(
        refused(bomb),
        "header 1: a GNU long-link header of 2147483648 bytes (the limit is 4096)"
    );
    // Gzipped, after a harmless entry: the second header is the first refused.
    let mut after = file("fine", b"ok");
    after.extend(header(b"././@LongLink", b'L', 4097, b"", 0o644));
    after.extend(vec![0u8; 8192]);
    let c = Case::new(&gzip(&after));
    assert_eq!(
        c.refused(UnpackLimits::default()),
        "header 2: a GNU long-name header of 4097 bytes (the limit is 4096)"
    );
}

#[test]
fn a_pax_bomb_is_refused_before_allocating() {
    for (kind, size) in [(b'x', 1u64 << 30), (b'g', 65537)] {
        let mut bomb = header(b"PaxHeaders/x", kind, size, b"", 0o644);
        bomb.extend(vec![b'9'; 1 << 16]);
        assert_eq!(
            refused(bomb),
            format!("header 1: a PAX header of {size} bytes (the limit is 65536)")
        );
    }
}

#[test]
fn too_many_entries_are_refused() {
    let limits = UnpackLimits {
        max_entries: 2,
        ..UnpackLimits::default()
    };
    let c = Case::new(&archive(&[
        file("a", b"1"),
        file("b", b"2"),
        file("c", b"3"),
    ]));
    assert_eq!(
        c.refused(limits),
        "more than 2 entries (extension headers included)"
    );
    // Extension headers count: an endless run of them is not free.
    let many: Vec<Vec<u8>> = (0..5).map(|_| pax(&[("mtime", b"1")])).collect();
    let c = Case::new(&archive(&[many.concat(), file("a", b"1")]));
    assert_eq!(
        c.refused(UnpackLimits {
            max_entries: 4,
            ..UnpackLimits::default()
        }),
        "more than 4 entries (extension headers included)"
    );
}

#[test]
fn too_many_bytes_are_refused_before_writing() {
    let limits = UnpackLimits {
        max_bytes: 512 * 1024,
        ..UnpackLimits::default()
    };
    let big = archive(&[file("small", b"x"), file("big", &vec![7u8; 1 << 20])]);
    let c = Case::new(&big);
    assert_eq!(
        c.refused(limits),
        "the archive unpacks to more than 524288 bytes"
    );
    // A gzip bomb: 64 MiB of zeros in one entry, a few dozen KiB compressed.
    let bomb = gzip(&archive(&[file("zeros", &vec![0u8; 64 << 20])]));
    assert!(bomb.len() < 1 << 20);
    let c = Case::new(&bomb);
    assert_eq!(
        c.refused(UnpackLimits {
            max_bytes: 1 << 20,
            ..UnpackLimits::default()
        }),
        "the archive unpacks to more than 1048576 bytes"
    );
    // Names and link targets kept in memory are bounded too.
    let names: Vec<Vec<u8>> = (0..100).map(|i| file(&format!("f{i:03}"), b"")).collect();
    let c = Case::new(&archive(&names));
    assert_eq!(
        c.refused(UnpackLimits {
            max_meta: 200,
            ..UnpackLimits::default()
        }),
        "more than 200 bytes of names and link targets"
    );
}

#[test]
fn broken_archives_are_refused() {
    let mut bad = file("a", b"x");
    bad[0] = b'b';
    assert_eq!(
        refused(archive(&[bad])),
        "header 1: not a tar header (bad checksum)"
    );
    let mut cut = file("a", &[1u8; 2000]);
    cut.truncate(1000);
    assert_eq!(refused(cut), "the archive ends in the middle of an entry");
}
