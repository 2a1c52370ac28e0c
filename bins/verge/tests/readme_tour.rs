//! The README tour, run as written (issue 14, decision 018): every `sh` block of
//! README.md, in order, one command at a time, in one bash — a person's second terminal,
//! so variables, `cd` and background jobs carry over — against a fresh `verge dev` (the
//! binaries under test, started the way `./scripts/dev` starts it) with a home of its own
//! in a temp dir. Every command must exit 0, except one whose comment says `# error`,
//! which must fail. A block blocks the tour no longer than a person would wait.
//!
//! The README steers the test with one-line HTML comments right before a block (invisible
//! on the rendered page):
//! - `<!-- tour: dev -->` — the block's `./scripts/dev ARGS` line: (re)start `verge dev
//!   ARGS` (the running one gets SIGINT, as Ctrl-C, and must exit 0) and wait until its
//!   node `dev-edge` is Ready. Its other lines (`./scripts/test`) are not run: that is
//!   what runs this test.
//! - `<!-- tour: background -->` — "in another terminal": the block runs in the
//!   background; when `verge dev` is next stopped (a `dev` block, or the end of the
//!   tour) it must still be running (or have exited 0). A watch ends when the cloud
//!   stops, as the README says: what it does after that is not judged.
//! - ``<!-- tour: retry `CMD` until `TEXT` ... -->`` — the block's command starting with
//!   CMD is run again (every 2 s, up to 5 min) until it exits 0 and one line of its
//!   output holds every TEXT as a whole word; without `until`, until it exits 0.
//! - ``<!-- tour: expect `CMD` `TEXT` ... -->`` — one line of that command's output holds
//!   every TEXT.
//! - `<!-- tour: skip REASON -->` — not run; the reason is printed.
//!
//! What a person has and the test provides: root, the packages of `scripts/deps`, a
//! running dockerd (here a private one with a bridge of its own, `Dockerd::
//! start_bridged`, reached through `DOCKER_HOST` and `VERGE_EDGE_DOCKER_SOCKET`), and a
//! clone: a temp dir with `examples` and `scripts` linked to the real ones and
//! `target/release/{verge,verge-edge}` linked to the binaries under test. The README's
//! fixed addresses (127.0.0.1:7443, :7444 and :8883 of `verge dev`, :5000 of the registry,
//! :9099 of the callback receiver) are used as written: tour runs on one machine take a
//! lock (`/tmp/verge-readme-tour.lock`) and a port held by anything else fails the test
//! naming it. Every process of the tour is stopped at the end, and any left with its
//! working directory or executable under the temp dir is killed.
//!
//! The parsing (blocks, directives, commands) is plain code with unit tests below;
//! splitting a block into commands asks `bash -n` whether the lines so far are complete.

use std::collections::BTreeMap;
use std::io::Write;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use verge_testkit::{Dockerd, workspace_bin};

const README: &str = include_str!("../../../README.md");
const REPO: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../..");
const VERGE: &str = env!("CARGO_BIN_EXE_verge");

/// How long one command may run (a rollout with image pulls and a failing health gate).
const COMMAND_TIMEOUT: Duration = Duration::from_secs(600);
/// How long a `retry` command is retried (a cron trigger fires once a minute).
const RETRY_TIMEOUT: Duration = Duration::from_secs(300);
/// How long `verge dev` may take to have its node Ready.
const DEV_READY_TIMEOUT: Duration = Duration::from_secs(180);
/// The ports the README's commands use, as written.
const PORTS: [(u16, &str); 5] = [
    (7443, "verge dev's API"),
    (7444, "verge dev's S3 API"),
    (8883, "verge dev's MQTT gateway"),
    (5000, "the tour's docker-registry"),
    (9099, "the tour's callback receiver"),
];

// ---------------------------------------------------------------------------------------
// Parsing: blocks and their directives.

#[derive(Debug, Clone, PartialEq)]
enum Directive {
    Skip(String),
    Dev,
    Background,
    Retry { command: String, until: Vec<String> },
    Expect { command: String, texts: Vec<String> },
}

#[derive(Debug, Clone, PartialEq)]
struct Block {
    /// 1-based line of the opening fence in the README.
    line: usize,
    code: String,
    directives: Vec<Directive>,
}

/// The `sh`/`bash` code blocks of a Markdown text with the directives right before them.
/// A directive not followed by a shell block (blank lines aside), or one that does not
/// parse, is an error naming its line.
fn blocks(markdown: &str) -> Result<Vec<Block>, String> {
    let mut out = Vec::new();
    let mut pending: Vec<(usize, Directive)> = Vec::new();
    let mut open: Option<(usize, bool, String)> = None; // (line, shell?, code)
    for (i, line) in markdown.lines().enumerate() {
        let n = i + 1;
        let t = line.trim();
        if let Some((start, shell, code)) = open.as_mut() {
            if t.starts_with("```") {
                if *shell {
                    out.push(Block {
                        line: *start,
                        code: std::mem::take(code),
                        directives: pending.drain(..).map(|(_, d)| d).collect(),
                    });
                }
                open = None;
            } else {
                code.push_str(line);
                code.push('\n');
            }
            continue;
        }
        if t.starts_with("<!-- tour") {
            let body = t
                .strip_prefix("<!-- tour:")
                .and_then(|r| r.strip_suffix("-->"))
                .ok_or_else(|| format!("line {n}: expected `<!-- tour: DIRECTIVE -->`"))?;
            pending.push((n, directive(body).map_err(|e| format!("line {n}: {e}"))?));
        } else if let Some(lang) = t.strip_prefix("```") {
            let shell = matches!(lang.trim(), "sh" | "bash");
            if !shell && let Some((at, _)) = pending.first() {
                return Err(format!(
                    "line {at}: a tour directive before a non-shell block"
                ));
            }
            open = Some((n, shell, String::new()));
        } else if !t.is_empty()
            && let Some((at, _)) = pending.first()
        {
            return Err(format!(
                "line {at}: a tour directive not followed by a block"
            ));
        }
    }
    if let Some((start, _, _)) = open {
        return Err(format!("line {start}: code block never closed"));
    }
    if let Some((at, _)) = pending.first() {
        return Err(format!(
            "line {at}: a tour directive not followed by a block"
        ));
    }
    Ok(out)
}

/// One directive's text (after `tour:`).
fn directive(body: &str) -> Result<Directive, String> {
    let body = body.trim();
    let (word, rest) = body.split_once(' ').unwrap_or((body, ""));
    let rest = rest.trim();
    match word {
        "dev" | "background" if !rest.is_empty() => Err(format!("`{word}` takes nothing")),
        "dev" => Ok(Directive::Dev),
        "background" => Ok(Directive::Background),
        "skip" if rest.is_empty() => Err("`skip` needs a reason".into()),
        "skip" => Ok(Directive::Skip(rest.into())),
        "retry" => {
            let mut tokens = tokens(rest)?.into_iter();
            let command = quoted(tokens.next(), "retry")?;
            let until = match tokens.next() {
                None => Vec::new(),
                Some(Token::Word(w)) if w == "until" => {
                    let texts: Vec<String> = tokens
                        .map(|t| quoted(Some(t), "until"))
                        .collect::<Result<_, _>>()?;
                    if texts.is_empty() {
                        return Err("`until` needs at least one `TEXT`".into());
                    }
                    texts
                }
                Some(other) => return Err(format!("expected `until`, found {other:?}")),
            };
            Ok(Directive::Retry { command, until })
        }
        "expect" => {
            let mut tokens = tokens(rest)?.into_iter();
            let command = quoted(tokens.next(), "expect")?;
            let texts: Vec<String> = tokens
                .map(|t| quoted(Some(t), "expect"))
                .collect::<Result<_, _>>()?;
            if texts.is_empty() {
                return Err("`expect` needs at least one `TEXT` after the command".into());
            }
            Ok(Directive::Expect { command, texts })
        }
        other => Err(format!(
            "unknown directive {other:?} (dev, background, retry, expect, skip)"
        )),
    }
}

#[derive(Debug, PartialEq)]
enum Token {
    Word(String),
    Quoted(String),
}

/// Bare words and `backquoted strings`.
fn tokens(s: &str) -> Result<Vec<Token>, String> {
    let mut out = Vec::new();
    let mut rest = s.trim_start();
    while !rest.is_empty() {
        if let Some(r) = rest.strip_prefix('`') {
            let end = r.find('`').ok_or("unclosed backquote")?;
            out.push(Token::Quoted(r[..end].to_string()));
            rest = &r[end + 1..];
        } else {
            let end = rest.find([' ', '`']).unwrap_or(rest.len());
            out.push(Token::Word(rest[..end].to_string()));
            rest = &rest[end..];
        }
        rest = rest.trim_start();
    }
    Ok(out)
}

fn quoted(t: Option<Token>, what: &str) -> Result<String, String> {
    match t {
        Some(Token::Quoted(q)) if !q.is_empty() => Ok(q),
        other => Err(format!(
            "`{what}` expects a `backquoted` text, found {other:?}"
        )),
    }
}

/// Whether one line of `output` holds every text of `texts`, each as a whole word (not
/// inside a longer word: `Ready` is not found in `NotReady`).
fn has_line_with(output: &str, texts: &[String]) -> bool {
    output
        .lines()
        .any(|line| texts.iter().all(|t| has_word(line, t)))
}

fn has_word(line: &str, text: &str) -> bool {
    let word = |c: Option<char>| c.is_some_and(|c| c.is_alphanumeric() || c == '_');
    line.match_indices(text).any(|(i, _)| {
        let before = line[..i].chars().next_back();
        let after = line[i + text.len()..].chars().next();
        let glued_before = word(before) && word(text.chars().next());
        let glued_after = word(after) && word(text.chars().next_back());
        !glued_before && !glued_after
    })
}

/// Whether a command's comment says it fails (`# error: 403 ...`).
fn expects_failure(command: &str) -> bool {
    command.contains("# error")
}

// ---------------------------------------------------------------------------------------
// Commands: a block's lines, grouped as bash reads them.

#[derive(Debug, Clone, PartialEq)]
struct Cmd {
    /// README line of its first line.
    line: usize,
    text: String,
}

/// Splits a block into commands: lines are added until `bash -n` finds them complete
/// (no open quote, heredoc, `\`, `|` or `&&`). Blank and comment-only lines between
/// commands are left out. `first_line` is the README line of the block's first line.
fn commands(code: &str, first_line: usize) -> Result<Vec<Cmd>> {
    let mut out = Vec::new();
    let mut acc = String::new();
    let mut start = 0;
    for (i, line) in code.lines().enumerate() {
        if acc.is_empty() {
            let t = line.trim();
            if t.is_empty() || t.starts_with('#') {
                continue;
            }
            start = first_line + i;
        }
        acc.push_str(line);
        acc.push('\n');
        if !line.trim_end().ends_with('\\') && complete(&acc)? {
            out.push(Cmd {
                line: start,
                text: std::mem::take(&mut acc),
            });
        }
    }
    if !acc.is_empty() {
        bail!(
            "README line {start}: a command never completes: {}",
            syntax_error(&acc)?
        );
    }
    Ok(out)
}

/// `bash -n` accepts `text` without complaint (a heredoc running into the end only
/// warns, so any output counts as incomplete).
fn complete(text: &str) -> Result<bool> {
    Ok(syntax_error(text)?.is_empty())
}

fn syntax_error(text: &str) -> Result<String> {
    let mut child = Command::new("bash")
        .arg("-n")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("running bash -n")?;
    child
        .stdin
        .take()
        .context("bash stdin")?
        .write_all(text.as_bytes())?;
    let out = child.wait_with_output()?;
    let msg = String::from_utf8_lossy(&out.stderr).trim().to_string();
    Ok(match (out.status.success(), msg.is_empty()) {
        (true, true) => String::new(),
        (_, false) => msg,
        (false, true) => "bash -n failed".into(),
    })
}

/// The arguments of the block's `./scripts/dev` line.
fn dev_args(code: &str) -> Option<Vec<String>> {
    code.lines().find_map(|l| {
        let l = l.split(" #").next().unwrap_or(l).trim();
        let rest = l.strip_prefix("./scripts/dev")?;
        (rest.is_empty() || rest.starts_with(' '))
            .then(|| rest.split_whitespace().map(str::to_string).collect())
    })
}

// ---------------------------------------------------------------------------------------
// Running: one bash, fed one command at a time.

/// The person's terminal: a bash of its own process group reading commands from a pipe;
/// each runs with its output in a file and its exit code written after it.
struct Shell {
    child: Child,
    stdin: ChildStdin,
    dir: PathBuf,
    n: usize,
}

impl Shell {
    fn start(cwd: &Path, env: &BTreeMap<String, String>, dir: &Path) -> Result<Shell> {
        std::fs::create_dir_all(dir)?;
        let log = std::fs::File::create(dir.join("shell.log"))?;
        let mut child = Command::new("bash")
            .args(["--noprofile", "--norc"])
            .current_dir(cwd)
            .env_clear()
            .envs(env)
            .stdin(Stdio::piped())
            .stdout(log.try_clone()?)
            .stderr(log)
            .process_group(0)
            .spawn()
            .context("starting bash")?;
        let stdin = child.stdin.take().context("bash stdin")?;
        Ok(Shell {
            child,
            stdin,
            dir: dir.to_path_buf(),
            n: 0,
        })
    }

    fn send(&mut self, line: &str) -> Result<()> {
        self.stdin
            .write_all(line.as_bytes())
            .and_then(|_| self.stdin.flush())
            .context("writing to the tour's shell (did it exit?)")
    }

    /// Waits for `file` to appear (written by the shell); `None` after `timeout`.
    fn wait_file(&mut self, file: &Path, timeout: Duration) -> Result<Option<String>> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(s) = std::fs::read_to_string(file) {
                return Ok(Some(s));
            }
            if let Some(status) = self.child.try_wait()? {
                bail!("the tour's shell exited ({status})");
            }
            if Instant::now() > deadline {
                return Ok(None);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Runs `text` in the shell (stdin from /dev/null); its exit code and output, or
    /// `None` when it did not finish within `timeout` (it is left running).
    fn run(&mut self, text: &str, timeout: Duration) -> Result<Option<(i32, String)>> {
        self.n += 1;
        let d = self.dir.display();
        let n = self.n;
        std::fs::write(self.dir.join(format!("cmd-{n}.sh")), text)?;
        self.send(&format!(
            "source {d}/cmd-{n}.sh </dev/null >{d}/out-{n}.txt 2>&1; echo $? >{d}/rc-{n}.tmp; mv {d}/rc-{n}.tmp {d}/rc-{n}\n"
        ))?;
        let rc = self.wait_file(&self.dir.join(format!("rc-{n}")), timeout)?;
        let output =
            std::fs::read_to_string(self.dir.join(format!("out-{n}.txt"))).unwrap_or_default();
        Ok(rc.map(|rc| (rc.trim().parse().unwrap_or(-1), output)))
    }

    /// Starts `text` as a background job; returns its number for [`Shell::job_state`].
    fn background(&mut self, text: &str) -> Result<usize> {
        self.n += 1;
        let d = self.dir.display();
        let n = self.n;
        std::fs::write(self.dir.join(format!("cmd-{n}.sh")), text)?;
        self.send(&format!(
            "( source {d}/cmd-{n}.sh ) </dev/null >{d}/out-{n}.txt 2>&1 & echo $! >{d}/pid-{n}.tmp; mv {d}/pid-{n}.tmp {d}/pid-{n}\n"
        ))?;
        self.wait_file(&self.dir.join(format!("pid-{n}")), Duration::from_secs(30))?
            .context("the shell did not start a background job")?;
        Ok(n)
    }

    /// `None` while job `n` runs, else its exit code; and its output so far.
    fn job_state(&mut self, n: usize) -> Result<(Option<i32>, String)> {
        let d = self.dir.display();
        let pid = std::fs::read_to_string(self.dir.join(format!("pid-{n}")))?;
        let pid = pid.trim();
        self.send(&format!(
            "if kill -0 {pid} 2>/dev/null; then echo running; else wait {pid}; echo $?; fi >{d}/state-{n}.tmp; mv {d}/state-{n}.tmp {d}/state-{n}\n"
        ))?;
        let state = self
            .wait_file(
                &self.dir.join(format!("state-{n}")),
                Duration::from_secs(30),
            )?
            .context("the shell did not answer")?;
        let output =
            std::fs::read_to_string(self.dir.join(format!("out-{n}.txt"))).unwrap_or_default();
        let state = state.trim();
        Ok((
            (state != "running").then(|| state.parse().unwrap_or(-1)),
            output,
        ))
    }

    /// SIGTERM to the shell's process group (its jobs too), SIGKILL after 10 s.
    fn stop(&mut self) {
        let group = nix::unistd::Pid::from_raw(-(self.child.id() as i32));
        let _ = nix::sys::signal::kill(group, nix::sys::signal::Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = nix::sys::signal::kill(group, nix::sys::signal::Signal::SIGKILL);
        let _ = self.child.wait();
    }
}

/// `verge dev` as `./scripts/dev ARGS` runs it, in its own process group (Ctrl-C goes to
/// it alone), its output in a log file.
struct Dev {
    child: Child,
    log: PathBuf,
}

impl Dev {
    fn start(
        bin: &Path,
        args: &[String],
        cwd: &Path,
        env: &BTreeMap<String, String>,
        log: PathBuf,
    ) -> Result<Dev> {
        let f = std::fs::File::create(&log)?;
        let child = Command::new(bin)
            .arg("dev")
            .args(args)
            .current_dir(cwd)
            .env_clear()
            .envs(env)
            .stdin(Stdio::null())
            .stdout(f.try_clone()?)
            .stderr(f)
            .process_group(0)
            .spawn()
            .context("starting verge dev")?;
        Ok(Dev { child, log })
    }

    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }

    /// Waits until `verge get node dev-edge` says Ready (what a person sees in the
    /// banner and then in `verge get nodes`).
    fn wait_ready(
        &mut self,
        verge: &Path,
        cwd: &Path,
        env: &BTreeMap<String, String>,
    ) -> Result<()> {
        let deadline = Instant::now() + DEV_READY_TIMEOUT;
        let mut last;
        loop {
            if let Some(status) = self.child.try_wait()? {
                bail!(
                    "verge dev exited ({status}); its log ends:\n{}",
                    self.log_tail()
                );
            }
            let out = Command::new(verge)
                .args(["get", "node", "dev-edge"])
                .current_dir(cwd)
                .env_clear()
                .envs(env)
                .output()?;
            last = format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            if out.status.success() && has_line_with(&last, &["dev-edge".into(), "Ready".into()]) {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!(
                    "dev-edge not Ready {DEV_READY_TIMEOUT:?} after verge dev started; last answer: {last}\nverge dev's log ends:\n{}",
                    self.log_tail()
                );
            }
            std::thread::sleep(Duration::from_millis(500));
        }
    }

    /// Ctrl-C: SIGINT, then up to 60 s for it to exit; its exit status.
    fn interrupt(mut self) -> Result<std::process::ExitStatus> {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGINT)?;
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(status) = self.child.try_wait()? {
                return Ok(status);
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                bail!(
                    "verge dev did not stop within 60 s of Ctrl-C; its log ends:\n{}",
                    self.log_tail()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Dev {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Kills every process whose working directory or executable lies under `root`
/// (native apps and function workers a failed tour left behind).
fn kill_leftovers(root: &Path) {
    let me = std::process::id();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return;
    };
    for e in entries.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        if pid == me {
            continue;
        }
        let under = ["cwd", "exe"]
            .iter()
            .any(|l| std::fs::read_link(e.path().join(l)).is_ok_and(|p| p.starts_with(root)));
        if under {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid as i32),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
}

/// The README says Ctrl-C stops `verge dev`: exit code 0, when the tour restarts it and
/// at the end (issue 14 point 2: it used to panic, exit 101).
fn ctrl_c_exit(status: std::process::ExitStatus) -> Result<()> {
    anyhow::ensure!(
        status.success(),
        "verge dev stopped by Ctrl-C exited {status}"
    );
    Ok(())
}

fn clip(s: &str, max: usize) -> &str {
    match s.char_indices().nth(max) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

/// Runs every block; the first failure as the error.
fn tour(
    blocks: &[Block],
    shell: &mut Shell,
    dev: &mut Option<Dev>,
    ctx: &TourCtx,
) -> Result<TourSummary> {
    let mut summary = TourSummary::default();
    for block in blocks {
        let at = block.line;
        if let Some(reason) = block.directives.iter().find_map(|d| match d {
            Directive::Skip(r) => Some(r),
            _ => None,
        }) {
            eprintln!("tour: README line {at}: skipped: {reason}");
            summary.skipped.push(format!("line {at}: {reason}"));
            continue;
        }
        if block.directives.contains(&Directive::Dev) {
            let args = dev_args(&block.code)
                .ok_or_else(|| anyhow!("README line {at}: a `dev` block without ./scripts/dev"))?;
            if let Some(running) = dev.take() {
                judge_background(shell, &mut summary)?;
                eprintln!("tour: README line {at}: Ctrl-C on verge dev");
                let status = running.interrupt()?;
                ctrl_c_exit(status).with_context(|| format!("README line {at}"))?;
            }
            eprintln!("tour: README line {at}: verge dev {}", args.join(" "));
            summary.dev_starts += 1;
            let log = ctx.work.join(format!("dev-{}.log", summary.dev_starts));
            let mut d = Dev::start(&ctx.verge, &args, &ctx.clone, &ctx.env, log)?;
            d.wait_ready(&ctx.verge, &ctx.clone, &ctx.env)?;
            *dev = Some(d);
            continue;
        }
        let cmds = commands(&block.code, at + 1)?;
        for d in &block.directives {
            if let Directive::Retry { command, .. } | Directive::Expect { command, .. } = d {
                let n = cmds
                    .iter()
                    .filter(|c| c.text.starts_with(command.as_str()))
                    .count();
                if n != 1 {
                    bail!("README line {at}: `{command}` names {n} commands of its block, not one");
                }
            }
        }
        if block.directives.contains(&Directive::Background) {
            eprintln!(
                "tour: README line {at}: in the background: {}",
                block.code.trim()
            );
            let job = shell.background(&block.code)?;
            summary.background.push((at, job));
            continue;
        }
        for cmd in &cmds {
            run_command(shell, block, cmd, dev.as_ref())?;
            summary.commands += 1;
        }
    }
    Ok(summary)
}

/// Before `verge dev` stops: every background block started so far must still be
/// running or have exited 0. They are judged once: stopping the cloud ends the watches.
fn judge_background(shell: &mut Shell, summary: &mut TourSummary) -> Result<()> {
    for (line, job) in std::mem::take(&mut summary.background) {
        let (state, output) = shell.job_state(job)?;
        match state {
            None | Some(0) => summary.background_judged += 1,
            Some(rc) => bail!(
                "README line {line}: the background block exited {rc}:\n{}",
                clip(&output, 2000)
            ),
        }
    }
    Ok(())
}

fn run_command(shell: &mut Shell, block: &Block, cmd: &Cmd, dev: Option<&Dev>) -> Result<()> {
    let retry = block.directives.iter().find_map(|d| match d {
        Directive::Retry { command, until } if cmd.text.starts_with(command.as_str()) => {
            Some(until.clone())
        }
        _ => None,
    });
    let expect = block.directives.iter().find_map(|d| match d {
        Directive::Expect { command, texts } if cmd.text.starts_with(command.as_str()) => {
            Some(texts.clone())
        }
        _ => None,
    });
    let first = cmd.text.lines().next().unwrap_or_default();
    eprintln!("tour: README line {}: {}", cmd.line, clip(first, 160));
    let dev_log = || dev.map(Dev::log_tail).unwrap_or_default();
    let started = Instant::now();
    let deadline = started + retry.as_ref().map_or(COMMAND_TIMEOUT, |_| RETRY_TIMEOUT);
    let mut attempts = 0;
    loop {
        attempts += 1;
        let left = deadline.saturating_duration_since(Instant::now());
        let Some((rc, output)) = shell.run(&cmd.text, left.max(Duration::from_secs(1)))? else {
            bail!(
                "README line {}: `{first}` still running after {:?}\nverge dev's log ends:\n{}",
                cmd.line,
                started.elapsed(),
                dev_log()
            );
        };
        let ok = match &retry {
            Some(until) => rc == 0 && (until.is_empty() || has_line_with(&output, until)),
            None => true,
        };
        if !ok && Instant::now() < deadline {
            std::thread::sleep(Duration::from_secs(2));
            continue;
        }
        let shown = clip(&output, 2000);
        if retry.is_some() && !ok {
            bail!(
                "README line {}: `{first}` not as awaited after {attempts} attempts in {:?} (exit {rc}):\n{shown}\nverge dev's log ends:\n{}",
                cmd.line,
                started.elapsed(),
                dev_log()
            );
        }
        match (expects_failure(&cmd.text), rc == 0) {
            (false, false) => bail!(
                "README line {}: `{first}` exited {rc}:\n{shown}\nverge dev's log ends:\n{}",
                cmd.line,
                dev_log()
            ),
            (true, true) => bail!(
                "README line {}: `{first}` is marked `# error` but exited 0:\n{shown}",
                cmd.line
            ),
            _ => {}
        }
        if let Some(texts) = &expect
            && !has_line_with(&output, texts)
        {
            bail!(
                "README line {}: no line of `{first}`'s output holds {texts:?}:\n{shown}",
                cmd.line
            );
        }
        if !output.trim().is_empty() {
            eprintln!("{}", clip(output.trim_end(), 600));
        }
        return Ok(());
    }
}

struct TourCtx {
    verge: PathBuf,
    clone: PathBuf,
    work: PathBuf,
    env: BTreeMap<String, String>,
}

#[derive(Default)]
struct TourSummary {
    commands: usize,
    dev_starts: usize,
    skipped: Vec<String>,
    /// Background blocks not judged yet: (README line, job).
    background: Vec<(usize, usize)>,
    background_judged: usize,
}

#[tokio::test(flavor = "multi_thread")]
async fn readme_tour_runs_as_written() -> Result<()> {
    anyhow::ensure!(
        nix::unistd::Uid::effective().is_root(),
        "the README tour needs root, as `./scripts/dev` does (packages, the function sandbox)"
    );
    let blocks = blocks(README).map_err(|e| anyhow!("README.md: {e}"))?;

    // One tour at a time on a machine: they share the README's ports.
    let lock = std::fs::File::create("/tmp/verge-readme-tour.lock")?;
    lock.lock()?;
    for (port, what) in PORTS {
        std::net::TcpListener::bind(("127.0.0.1", port)).with_context(|| {
            format!("port {port} ({what} in the README) is taken: stop what holds it")
        })?;
    }

    let tmp = tempfile::Builder::new().prefix("tour").tempdir_in("/tmp")?;
    let root = tmp.path().to_path_buf();
    let (home, clone, work) = (root.join("home"), root.join("clone"), root.join("work"));
    for d in [&home, &clone.join("target/release"), &work] {
        std::fs::create_dir_all(d)?;
    }
    let repo = std::fs::canonicalize(REPO)?;
    let verge = PathBuf::from(VERGE);
    let verge_edge = workspace_bin("verge-edge-cli", "verge-edge")?;
    for (link, to) in [
        ("examples", repo.join("examples")),
        ("scripts", repo.join("scripts")),
        ("target/release/verge", verge.clone()),
        ("target/release/verge-edge", verge_edge),
    ] {
        std::os::unix::fs::symlink(to, clone.join(link))?;
    }

    let dockerd = Dockerd::start_bridged("verge-tour0", "10.213.0.1/24").await?;
    let mut env = BTreeMap::new();
    for (k, v) in [
        ("HOME", home.display().to_string()),
        ("PATH", std::env::var("PATH").unwrap_or_default()),
        ("LANG", "C.UTF-8".into()),
        ("TERM", "dumb".into()),
        ("USER", "root".into()),
        ("DOCKER_HOST", dockerd.host()),
        (
            "VERGE_EDGE_DOCKER_SOCKET",
            dockerd.socket().display().to_string(),
        ),
    ] {
        env.insert(k.to_string(), v);
    }
    let ctx = TourCtx {
        verge: clone.join("target/release/verge"),
        clone: clone.clone(),
        work: work.clone(),
        env,
    };

    let started = Instant::now();
    let mut shell = Shell::start(&clone, &ctx.env, &work.join("shell"))?;
    let mut dev: Option<Dev> = None;
    let result = tokio::task::block_in_place(|| -> Result<TourSummary> {
        let mut summary = tour(&blocks, &mut shell, &mut dev, &ctx)?;
        judge_background(&mut shell, &mut summary)?;
        // The README's last word on verge dev: Ctrl-C stops it.
        if let Some(d) = dev.take() {
            ctrl_c_exit(d.interrupt()?)?;
        }
        Ok(summary)
    });
    shell.stop();
    drop(dev);
    kill_leftovers(&root);
    drop(dockerd);
    kill_leftovers(&root);
    let summary = result?;
    eprintln!(
        "tour: {} commands and {} background blocks ran, verge dev started {} times, in {:?}; skipped: {}",
        summary.commands,
        summary.background_judged,
        summary.dev_starts,
        started.elapsed(),
        if summary.skipped.is_empty() {
            "none".to_string()
        } else {
            summary.skipped.join("; ")
        }
    );
    Ok(())
}

// ---------------------------------------------------------------------------------------
// The parsing, with plain values.

#[test]
fn directives_parse() {
    assert_eq!(directive("dev"), Ok(Directive::Dev));
    assert_eq!(directive(" background "), Ok(Directive::Background));
    assert_eq!(
        directive("skip needs a second machine"),
        Ok(Directive::Skip("needs a second machine".into()))
    );
    assert_eq!(
        directive("retry `verge get nodes` until `edge-2` `Ready`"),
        Ok(Directive::Retry {
            command: "verge get nodes".into(),
            until: vec!["edge-2".into(), "Ready".into()],
        })
    );
    assert_eq!(
        directive("retry `docker push`"),
        Ok(Directive::Retry {
            command: "docker push".into(),
            until: vec![],
        })
    );
    assert_eq!(
        directive("expect `verge image info x -` `\"format\": \"jpeg\"`"),
        Ok(Directive::Expect {
            command: "verge image info x -".into(),
            texts: vec!["\"format\": \"jpeg\"".into()],
        })
    );
    for bad in [
        "skip",
        "dev now",
        "retry verge",
        "retry `a` when `b`",
        "retry `a` until",
        "expect `a`",
        "expect `a",
        "wait `a`",
    ] {
        assert!(directive(bad).is_err(), "{bad}");
    }
}

#[test]
fn blocks_carry_the_directives_before_them() {
    let md = "# T\n\n<!-- tour: dev -->\n```sh\n./scripts/dev\n```\n\ntext\n\n```yaml\na: 1\n```\n<!-- tour: skip why -->\n\n```sh\necho a\necho b\n```\n```bash\nls\n```\n";
    let b = blocks(md).unwrap();
    assert_eq!(b.len(), 3);
    assert_eq!((b[0].line, b[0].code.as_str()), (4, "./scripts/dev\n"));
    assert_eq!(b[0].directives, vec![Directive::Dev]);
    assert_eq!((b[1].line, b[1].code.as_str()), (15, "echo a\necho b\n"));
    assert_eq!(b[1].directives, vec![Directive::Skip("why".into())]);
    assert_eq!(b[2].directives, vec![]);

    for (bad, line) in [
        ("<!-- tour: dev -->\ntext\n```sh\nx\n```\n", "line 1"),
        ("<!-- tour: dev -->\n```yaml\nx\n```\n", "line 1"),
        ("<!-- tour: bogus -->\n```sh\nx\n```\n", "line 1"),
        ("<!-- tour: dev\n```sh\nx\n```\n", "line 1"),
        ("```sh\nx\n", "line 1"),
        ("```sh\nx\n```\n<!-- tour: dev -->\n", "line 4"),
    ] {
        let e = blocks(bad).unwrap_err();
        assert!(e.starts_with(line), "{bad:?}: {e}");
    }
}

#[test]
fn commands_are_split_as_bash_reads_them() {
    let code = "# a comment\nverge get apps   # NAME ...\n\ncat <<'YAML' | verge apply -f -\nkind: App   # not a command\n\nYAML\necho 'two\nlines' \\\n  --flag\nverge a && \\\n  verge b\nsed x | \n  verge apply -f -\n#   output shown\n";
    let c = commands(code, 10).unwrap();
    let texts: Vec<&str> = c.iter().map(|c| c.text.as_str()).collect();
    assert_eq!(
        texts,
        vec![
            "verge get apps   # NAME ...\n",
            "cat <<'YAML' | verge apply -f -\nkind: App   # not a command\n\nYAML\n",
            "echo 'two\nlines' \\\n  --flag\n",
            "verge a && \\\n  verge b\n",
            "sed x | \n  verge apply -f -\n",
        ]
    );
    let lines: Vec<usize> = c.iter().map(|c| c.line).collect();
    assert_eq!(lines, vec![11, 13, 17, 20, 22]);
    assert!(commands("echo 'never closed\n", 1).is_err());
    assert!(commands("cat <<EOF\nno end\n", 1).is_err());
}

#[test]
fn awaited_text_is_matched_as_words_on_one_line() {
    let out = "NAME     STATUS\ndev-edge Ready\nedge-2   NotReady\n";
    let w = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    assert!(has_line_with(out, &w(&["dev-edge", "Ready"])));
    assert!(!has_line_with(out, &w(&["edge-2", "Ready"])));
    assert!(!has_line_with(out, &w(&["dev-edge", "NotReady"])));
    assert!(has_line_with("edge-2 Ready", &w(&["edge-2", "Ready"])));
    assert!(!has_line_with("edge-20 Ready", &w(&["edge-2"])));
    assert!(has_line_with(
        r#"  "format": "jpeg","#,
        &w(&[r#""format": "jpeg""#])
    ));
    assert!(has_line_with("[t-1] greeting cron", &w(&["greeting cron"])));
    assert!(expects_failure("verge apply --token x   # error: 403\n"));
    assert!(!expects_failure(
        "verge apply -f x.yaml   # app/web created\n"
    ));
}

#[test]
fn dev_blocks_give_the_arguments_of_scripts_dev() {
    assert_eq!(
        dev_args("# 1. run\n./scripts/dev\n\n./scripts/test\n"),
        Some(vec![])
    );
    assert_eq!(
        dev_args("./scripts/dev --outbound-allow-networks 127.0.0.1/32   # loopback\n"),
        Some(vec![
            "--outbound-allow-networks".into(),
            "127.0.0.1/32".into()
        ])
    );
    assert_eq!(dev_args("./scripts/devious\n"), None);
    assert_eq!(dev_args("./scripts/test\n"), None);
}

#[test]
fn the_readme_parses_and_every_command_completes() {
    let b = blocks(README).unwrap();
    assert!(b.iter().any(|b| b.directives.contains(&Directive::Dev)));
    for block in &b {
        commands(&block.code, block.line + 1).unwrap();
    }
}
