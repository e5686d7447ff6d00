//! `file`: `read`, `list`, `stat`, `write` and `append` inside a sandbox root — `args: {op, path,
//! content}`.
//!
//! The root is canonicalised and opened once, when the tool is set up; every path is resolved
//! *beneath* that open directory by the kernel (`openat2` with `RESOLVE_BENEATH`), so `..`, an
//! absolute path, or a symlink leading out is refused, even if a symlink is swapped in between
//! a check and the use (there is no separate check). Paths are also refused up front, with the
//! reason, when they are absolute or contain `..`. Only regular files are read or written (device
//! files, FIFOs and sockets are refused), up to `max_file_bytes` (default 1 MiB). `write` is
//! atomic: a temporary file in the same directory, synced, then renamed over the target.

use super::config::{Built, ToolConfig};
use super::{CallContext, Tool, ToolFuture};
use cairn_core::event::{ErrorClass, Failure};
use cairn_core::kinds::EffectClass;
use rustix::fd::OwnedFd;
use rustix::fs::{FileType, Mode, OFlags, ResolveFlags};
use serde_json::{Value, json};
use std::io::{Read, Write};
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;

const DEFAULT_MAX_BYTES: u64 = 1024 * 1024;
const MAX_LISTED: usize = 1000;

struct FileTool {
    root: Arc<OwnedFd>,
    shown: PathBuf,
    max_bytes: u64,
}

pub(crate) fn build(config: &ToolConfig) -> Result<Built, String> {
    let Some(root) = config.root.as_deref() else {
        return Err("a file tool needs `root` (its sandbox directory)".into());
    };
    let canonical = std::fs::canonicalize(root)
        .map_err(|e| format!("its root `{root}` cannot be used: {e} (create the directory first)"))?;
    if !canonical.is_dir() {
        return Err(format!("its root `{root}` is not a directory"));
    }
    let fd = rustix::fs::open(&canonical, OFlags::DIRECTORY | OFlags::RDONLY | OFlags::CLOEXEC, Mode::empty())
        .map_err(|e| format!("cannot open its root {}: {e}", canonical.display()))?;
    let max_bytes = config.max_file_bytes.unwrap_or(DEFAULT_MAX_BYTES);
    Ok(Built {
        description: format!(
            "Reads, lists, stats, writes (atomically) or appends to files under the sandbox {} (paths relative to \
             it; at most {max_bytes} bytes a file). Leaving the sandbox is refused.",
            canonical.display()
        ),
        input_schema: json!({
            "type": "object",
            "required": ["op", "path"],
            "properties": {
                "op": {"enum": ["read", "list", "stat", "write", "append"]},
                "path": {"type": "string", "maxLength": 4096, "description": "relative to the sandbox root; `.` is the root"},
                "content": {"type": "string", "description": "what write or append puts in the file"}
            },
            "additionalProperties": false
        }),
        effect: EffectClass::Write,
        effect_note: Some("read, list and stat only read".into()),
        code: Arc::new(FileTool { root: Arc::new(fd), shown: canonical, max_bytes }),
    })
}

fn refused(message: String) -> Failure {
    Failure { code: Some("refused".into()), ..Failure::new(ErrorClass::Permanent, message) }
}

impl Tool for FileTool {
    fn effect(&self, declared: EffectClass, args: &Value) -> EffectClass {
        match args.get("op").and_then(Value::as_str) {
            Some("read" | "list" | "stat") => EffectClass::Read,
            _ => declared,
        }
    }

    fn call<'a>(&'a self, args: &'a Value, _ctx: CallContext<'a>) -> ToolFuture<'a> {
        Box::pin(async move {
            let op = args.get("op").and_then(Value::as_str).unwrap_or_default().to_string();
            let path = args.get("path").and_then(Value::as_str).unwrap_or_default().to_string();
            let content = args.get("content").and_then(Value::as_str).map(str::to_string);
            let relative = relative(&path)?;
            if matches!(op.as_str(), "write" | "append") && content.is_none() {
                return Err(Failure::new(ErrorClass::Permanent, format!("op {op} needs args.content")));
            }
            let (root, max, shown) = (self.root.clone(), self.max_bytes, self.shown.clone());
            let work = move || match op.as_str() {
                "read" => read(&root, &relative, &path, max),
                "list" => list(&root, &relative, &path),
                "stat" => stat(&root, &relative, &path),
                "write" => write(&root, &relative, &path, content.unwrap_or_default().as_bytes(), max),
                "append" => append(&root, &relative, &path, content.unwrap_or_default().as_bytes(), max),
                other => Err(Failure::new(
                    ErrorClass::Permanent,
                    format!("op `{other}` is not read, list, stat, write or append"),
                )),
            };
            let result = tokio::task::spawn_blocking(work)
                .await
                .map_err(|e| Failure::new(ErrorClass::Transient, format!("the file operation's thread failed: {e}")))?;
            result.map_err(|f| Failure { message: format!("{} (sandbox {})", f.message, shown.display()), ..f })
        })
    }
}

/// The path as components under the root, or why it is refused.
fn relative(path: &str) -> Result<PathBuf, Failure> {
    if path.contains('\0') {
        return Err(refused("the path contains a NUL byte".into()));
    }
    let p = Path::new(path);
    if p.is_absolute() {
        return Err(refused(format!("`{path}` is an absolute path; paths are relative to the sandbox root")));
    }
    let mut out = PathBuf::new();
    for c in p.components() {
        match c {
            Component::Normal(part) => out.push(part),
            Component::CurDir => {}
            Component::ParentDir => {
                return Err(refused(format!("`{path}` contains `..`; paths may not leave the sandbox")));
            }
            Component::RootDir | Component::Prefix(_) => {
                return Err(refused(format!("`{path}` is an absolute path; paths are relative to the sandbox root")));
            }
        }
    }
    Ok(out)
}

/// Opens `rel` beneath the root (the root itself for an empty path).
fn open(root: &OwnedFd, rel: &Path, shown: &str, flags: OFlags, mode: Mode) -> Result<OwnedFd, Failure> {
    let target = if rel.as_os_str().is_empty() { Path::new(".") } else { rel };
    let resolve = ResolveFlags::BENEATH | ResolveFlags::NO_MAGICLINKS;
    // O_PATH takes no other flags (it opens nothing, so it cannot trigger a device either).
    let flags =
        if flags.contains(OFlags::PATH) { flags | OFlags::CLOEXEC } else { flags | OFlags::CLOEXEC | OFlags::NOCTTY };
    rustix::fs::openat2(root, target, flags, mode, resolve).map_err(|e| io_failure(e, shown))
}

fn io_failure(e: rustix::io::Errno, shown: &str) -> Failure {
    use rustix::io::Errno;
    match e {
        Errno::XDEV => refused(format!("`{shown}` leads out of the sandbox (through a symlink); refused")),
        Errno::LOOP => refused(format!("`{shown}` goes through too many symlinks")),
        Errno::NOENT => Failure::new(ErrorClass::Permanent, format!("`{shown}` does not exist")),
        Errno::NOTDIR => Failure::new(ErrorClass::Permanent, format!("a part of `{shown}` is not a directory")),
        Errno::ISDIR => Failure::new(ErrorClass::Permanent, format!("`{shown}` is a directory")),
        Errno::ACCESS | Errno::PERM => Failure::new(ErrorClass::Permanent, format!("`{shown}`: permission denied")),
        Errno::NOSYS => Failure::new(
            ErrorClass::Permanent,
            "this kernel has no openat2, which the file tool needs to keep paths in the sandbox (Linux 5.6 or later)",
        ),
        Errno::NOSPC | Errno::DQUOT => Failure::new(ErrorClass::Transient, format!("`{shown}`: no space left")),
        other => Failure::new(ErrorClass::Permanent, format!("`{shown}`: {other}")),
    }
}

fn kind_of(mode: u32) -> FileType {
    FileType::from_raw_mode(mode)
}

fn type_name(t: FileType) -> &'static str {
    match t {
        FileType::RegularFile => "file",
        FileType::Directory => "dir",
        FileType::Symlink => "symlink",
        _ => "other",
    }
}

/// Refuses what is not a regular file (a device, a FIFO, a socket, a directory), and a file with
/// other names (hard links: one of them may lie outside the sandbox).
fn regular(fd: &OwnedFd, shown: &str) -> Result<u64, Failure> {
    let st = rustix::fs::fstat(fd).map_err(|e| io_failure(e, shown))?;
    match kind_of(st.st_mode) {
        FileType::RegularFile if st.st_nlink > 1 => Err(refused(format!(
            "`{shown}` has {} names (hard links), and another may lie outside the sandbox; refused",
            st.st_nlink
        ))),
        FileType::RegularFile => Ok(st.st_size as u64),
        FileType::Directory => {
            Err(Failure::new(ErrorClass::Permanent, format!("`{shown}` is a directory; use op list")))
        }
        other => Err(refused(format!("`{shown}` is not a regular file ({other:?}); refused"))),
    }
}

fn read(root: &OwnedFd, rel: &Path, shown: &str, max: u64) -> Result<Value, Failure> {
    let fd = open(root, rel, shown, OFlags::RDONLY | OFlags::NONBLOCK, Mode::empty())?;
    let size = regular(&fd, shown)?;
    if size > max {
        return Err(refused(format!("`{shown}` is {size} bytes, over this tool's max_file_bytes ({max})")));
    }
    let mut bytes = Vec::with_capacity(size as usize);
    std::fs::File::from(fd)
        .take(max + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| Failure::new(ErrorClass::Transient, format!("reading `{shown}`: {e}")))?;
    if bytes.len() as u64 > max {
        return Err(refused(format!("`{shown}` grew past this tool's max_file_bytes ({max}) while it was read")));
    }
    let content = String::from_utf8(bytes)
        .map_err(|_| Failure::new(ErrorClass::Permanent, format!("`{shown}` is not UTF-8 text")))?;
    Ok(json!({"path": shown, "size": content.len(), "content": content}))
}

fn list(root: &OwnedFd, rel: &Path, shown: &str) -> Result<Value, Failure> {
    let fd = open(root, rel, shown, OFlags::RDONLY | OFlags::DIRECTORY, Mode::empty())?;
    let dir = rustix::fs::Dir::read_from(&fd).map_err(|e| io_failure(e, shown))?;
    let mut entries = Vec::new();
    let mut more = false;
    for entry in dir {
        let entry = entry.map_err(|e| io_failure(e, shown))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if name == "." || name == ".." {
            continue;
        }
        if entries.len() == MAX_LISTED {
            more = true;
            break;
        }
        entries.push(json!({"name": name, "type": type_name(entry.file_type())}));
    }
    entries.sort_by(|a, b| a["name"].as_str().cmp(&b["name"].as_str()));
    Ok(json!({"path": shown, "entries": entries, "truncated": more}))
}

fn stat(root: &OwnedFd, rel: &Path, shown: &str) -> Result<Value, Failure> {
    let fd = open(root, rel, shown, OFlags::PATH, Mode::empty())?;
    let st = rustix::fs::fstat(&fd).map_err(|e| io_failure(e, shown))?;
    let modified_ms = st.st_mtime * 1000 + (st.st_mtime_nsec as i64) / 1_000_000;
    Ok(json!({"path": shown, "type": type_name(kind_of(st.st_mode)), "size": st.st_size, "modified_ms": modified_ms}))
}

/// The directory that holds `rel` (made, beneath the root, when missing) and the file's name.
fn parent(root: &OwnedFd, rel: &Path, shown: &str) -> Result<(OwnedFd, std::ffi::OsString), Failure> {
    let Some(name) = rel.file_name().map(|n| n.to_os_string()) else {
        return Err(Failure::new(ErrorClass::Permanent, format!("`{shown}` names no file")));
    };
    let mut dir = open(root, Path::new(""), shown, OFlags::RDONLY | OFlags::DIRECTORY, Mode::empty())?;
    for part in rel.parent().into_iter().flat_map(Path::components) {
        let flags = OFlags::RDONLY | OFlags::DIRECTORY;
        dir = match open(&dir, Path::new(part.as_os_str()), shown, flags, Mode::empty()) {
            Err(f) if f.message.ends_with("does not exist") => {
                rustix::fs::mkdirat(&dir, part.as_os_str(), Mode::from_raw_mode(0o755))
                    .map_err(|e| io_failure(e, shown))?;
                open(&dir, Path::new(part.as_os_str()), shown, flags, Mode::empty())?
            }
            other => other?,
        };
    }
    Ok((dir, name))
}

fn write(root: &OwnedFd, rel: &Path, shown: &str, content: &[u8], max: u64) -> Result<Value, Failure> {
    if content.len() as u64 > max {
        return Err(refused(format!(
            "the content is {} bytes, over this tool's max_file_bytes ({max})",
            content.len()
        )));
    }
    let (dir, name) = parent(root, rel, shown)?;
    let temp = format!(".cairn-write-{}-{}", std::process::id(), crate::new_run_id().as_str());
    let flags = OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    let fd =
        rustix::fs::openat(&dir, temp.as_str(), flags, Mode::from_raw_mode(0o644)).map_err(|e| io_failure(e, shown))?;
    let mut file = std::fs::File::from(fd);
    let written = file.write_all(content).and_then(|_| file.sync_all());
    if let Err(e) = written {
        let _ = rustix::fs::unlinkat(&dir, temp.as_str(), rustix::fs::AtFlags::empty());
        return Err(Failure::new(ErrorClass::Transient, format!("writing `{shown}`: {e}")));
    }
    if let Err(e) = rustix::fs::renameat(&dir, temp.as_str(), &dir, name.as_os_str()) {
        let _ = rustix::fs::unlinkat(&dir, temp.as_str(), rustix::fs::AtFlags::empty());
        return Err(io_failure(e, shown));
    }
    let _ = rustix::fs::fsync(&dir);
    Ok(json!({"path": shown, "size": content.len(), "written": true}))
}

fn append(root: &OwnedFd, rel: &Path, shown: &str, content: &[u8], max: u64) -> Result<Value, Failure> {
    let (dir, name) = parent(root, rel, shown)?;
    let flags = OFlags::WRONLY | OFlags::APPEND | OFlags::CREATE | OFlags::NONBLOCK;
    let fd = open(&dir, Path::new(&name), shown, flags, Mode::from_raw_mode(0o644))?;
    let size = regular(&fd, shown)?;
    if size + content.len() as u64 > max {
        return Err(refused(format!("appending would make `{shown}` larger than this tool's max_file_bytes ({max})")));
    }
    let mut file = std::fs::File::from(fd);
    file.write_all(content)
        .and_then(|_| file.sync_data())
        .map_err(|e| Failure::new(ErrorClass::Transient, format!("appending to `{shown}`: {e}")))?;
    Ok(json!({"path": shown, "size": size + content.len() as u64, "appended": content.len()}))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tool(root: &Path) -> Arc<dyn Tool> {
        let config = ToolConfig {
            name: "ws".into(),
            kind: "file".into(),
            root: Some(root.display().to_string()),
            max_file_bytes: Some(64),
            ..ToolConfig::default()
        };
        build(&config).expect("file tool").code
    }

    async fn call(tool: &Arc<dyn Tool>, args: Value) -> Result<Value, Failure> {
        tool.call(&args, CallContext { key: "r/s/call-1", worker: "t" }).await
    }

    #[tokio::test]
    async fn writes_are_atomic_and_reads_lists_and_stats_stay_in_the_sandbox() {
        let dir = tempfile::tempdir().expect("dir");
        let t = tool(dir.path());
        let wrote = call(&t, json!({"op": "write", "path": "notes/a.txt", "content": "one"})).await.expect("write");
        assert_eq!(wrote["size"], 3);
        call(&t, json!({"op": "append", "path": "notes/a.txt", "content": " two"})).await.expect("append");
        let read = call(&t, json!({"op": "read", "path": "./notes/a.txt"})).await.expect("read");
        assert_eq!(read["content"], "one two");
        let listed = call(&t, json!({"op": "list", "path": "notes"})).await.expect("list");
        assert_eq!(listed["entries"], json!([{"name": "a.txt", "type": "file"}]), "no temporary file is left");
        let stat = call(&t, json!({"op": "stat", "path": "notes"})).await.expect("stat");
        assert_eq!(stat["type"], "dir");
        let big = "x".repeat(65);
        let over = call(&t, json!({"op": "write", "path": "b.txt", "content": big})).await.expect_err("over");
        assert!(over.message.contains("max_file_bytes"), "{over:?}");
    }

    #[tokio::test]
    async fn escapes_are_refused_with_the_reason() {
        let dir = tempfile::tempdir().expect("dir");
        let inside = dir.path().join("box");
        std::fs::create_dir(&inside).expect("box");
        std::fs::write(dir.path().join("secret.txt"), "s3cret").expect("secret");
        std::os::unix::fs::symlink("/", inside.join("to_root")).expect("symlink");
        std::os::unix::fs::symlink("../secret.txt", inside.join("up")).expect("symlink");
        let t = tool(&inside);
        for (args, says) in [
            (json!({"op": "read", "path": "../secret.txt"}), "contains `..`"),
            (json!({"op": "read", "path": "/etc/passwd"}), "absolute path"),
            (json!({"op": "read", "path": "to_root/etc/passwd"}), "leads out of the sandbox"),
            (json!({"op": "read", "path": "up"}), "leads out of the sandbox"),
            (json!({"op": "list", "path": "to_root"}), "leads out of the sandbox"),
            (json!({"op": "write", "path": "to_root/tmp/x", "content": "x"}), "leads out of the sandbox"),
            (json!({"op": "append", "path": "up", "content": "x"}), "leads out of the sandbox"),
        ] {
            let failure = call(&t, args.clone()).await.expect_err("refused");
            assert!(failure.message.contains(says), "{args}: {failure:?}");
            assert_eq!(failure.class, ErrorClass::Permanent);
        }
        assert_eq!(std::fs::read_to_string(dir.path().join("secret.txt")).expect("secret"), "s3cret");
        // A hard link to a file outside: neither read nor appended to.
        std::fs::hard_link(dir.path().join("secret.txt"), inside.join("hard")).expect("hard link");
        for op in ["read", "append"] {
            let failure = call(&t, json!({"op": op, "path": "hard", "content": "x"})).await.expect_err("refused");
            assert!(failure.message.contains("has 2 names (hard links)"), "{failure:?}");
        }
        assert_eq!(std::fs::read_to_string(dir.path().join("secret.txt")).expect("secret"), "s3cret");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_symlink_swapped_in_during_reads_never_leads_out() {
        // `swap` flips between a real directory inside the sandbox and a symlink to a directory
        // outside it, as fast as it can, while the tool reads `swap/data.txt` again and again.
        let dir = tempfile::tempdir().expect("dir");
        let (inside, outside) = (dir.path().join("box"), dir.path().join("outside"));
        std::fs::create_dir_all(inside.join("real")).expect("box");
        std::fs::create_dir(&outside).expect("outside");
        std::fs::write(inside.join("real/data.txt"), "inside").expect("inside file");
        std::fs::write(outside.join("data.txt"), "OUTSIDE").expect("outside file");
        let t = tool(&inside);
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flipper = {
            let (inside, outside, stop) = (inside.clone(), outside.clone(), stop.clone());
            std::thread::spawn(move || {
                let (swap, spare) = (inside.join("swap"), inside.join("spare"));
                std::os::unix::fs::symlink("real", &swap).expect("first link");
                std::os::unix::fs::symlink(&outside, &spare).expect("escape link");
                let mut flips = 0u32;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    // rename(2) swaps the links atomically: `swap` is always one or the other.
                    let _ = std::fs::rename(&spare, inside.join("tmp"));
                    let _ = std::fs::rename(&swap, &spare);
                    let _ = std::fs::rename(inside.join("tmp"), &swap);
                    flips += 1;
                }
                flips
            })
        };
        let (mut inside_reads, mut refused) = (0, 0);
        for _ in 0..2_000 {
            match call(&t, json!({"op": "read", "path": "swap/data.txt"})).await {
                Ok(read) => {
                    assert_eq!(read["content"], "inside", "a read left the sandbox");
                    inside_reads += 1;
                }
                Err(f) => {
                    assert!(
                        f.message.contains("leads out of the sandbox") || f.message.contains("does not exist"),
                        "{f:?}"
                    );
                    refused += 1;
                }
            }
        }
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let flips = flipper.join().expect("flipper");
        assert!(
            flips > 100 && refused > 0,
            "the race was exercised: {flips} flips, {inside_reads} reads, {refused} refused"
        );
    }
}
