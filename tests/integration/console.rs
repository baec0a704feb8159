//! The operator console and admin API, end to end: a real `bitnet coordinator` process with
//! two real workers, driven through Debian's headless Chromium by chromedriver (fantoccini),
//! plus an in-process check of the admin API and its scopes.
//!
//! The browser test needs `chromedriver` (Debian: `apt-get install chromium chromium-driver`;
//! `.ci/run` installs them). Without it the test says so loudly and skips, except under
//! `CI=1`, where it fails. Screenshots of every page go to `target/console-screenshots/`.

use crate::dist_process::{LIMIT, log_of, setup, store, tasks};
use bitnet_framework::coordinator_store::TaskState;
use bitnet_framework::protocol::CoordinatorApi;
use bitnet_runtime::admin::Admin;
use bitnet_runtime::admin::operators::{Operators, operators_path};
use bitnet_runtime::run::assemble::build_transport;
use bitnet_tests::dist;
use bitnet_tests::procs::{Proc, bitnet_bin, free_port, wait_for};
use fantoccini::{Client, ClientBuilder, Locator};
use reqwest::blocking::Client as Http;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

const OPERATOR: &str = "op";
const PASSWORD: &str = "correct horse battery staple";

/// The chromedriver to use: `$CHROMEDRIVER`, or `chromedriver` on the PATH.
fn chromedriver() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("CHROMEDRIVER") {
        return Some(PathBuf::from(p));
    }
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths).map(|d| d.join("chromedriver")).find(|p| p.is_file())
    })
}

/// A chromedriver process, killed on drop.
struct Driver(std::process::Child);

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A headless Chromium session and the runtime its client runs on; every call blocks.
struct Browser {
    rt: tokio::runtime::Runtime,
    client: Option<Client>,
    base: String,
    shots: PathBuf,
}

impl Browser {
    fn start(driver_port: u16, base: &str, downloads: &Path, profile: &Path) -> Self {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("rt");
        let args = [
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-dev-shm-usage",
            "--window-size=1200,1000",
        ]
        .iter()
        .map(|a| a.to_string())
        .chain([format!("--user-data-dir={}", profile.display())])
        .collect::<Vec<_>>();
        let mut caps = serde_json::Map::new();
        caps.insert(
            "goog:chromeOptions".into(),
            serde_json::json!({
                "args": args,
                "prefs": {
                    "download.default_directory": downloads.display().to_string(),
                    "download.prompt_for_download": false,
                },
            }),
        );
        let url = format!("http://127.0.0.1:{driver_port}");
        let client = rt.block_on(async {
            let connector = hyper_util::client::legacy::connect::HttpConnector::new();
            let deadline = Instant::now() + Duration::from_secs(30);
            loop {
                match ClientBuilder::new(connector.clone())
                    .capabilities(caps.clone())
                    .connect(&url)
                    .await
                {
                    Ok(c) => break c,
                    Err(e) if Instant::now() < deadline => {
                        eprintln!("waiting for chromedriver: {e}");
                        tokio::time::sleep(Duration::from_millis(300)).await;
                    }
                    Err(e) => panic!("no WebDriver session from chromedriver: {e}"),
                }
            }
        });
        let shots = bitnet_tests::workspace_root().join("target/console-screenshots");
        std::fs::create_dir_all(&shots).expect("screenshot dir");
        Self { rt, client: Some(client), base: base.to_string(), shots }
    }

    fn c(&self) -> &Client {
        self.client.as_ref().expect("session open")
    }

    fn goto(&self, path: &str) {
        let url = format!("{}{path}", self.base);
        self.rt.block_on(self.c().goto(&url)).unwrap_or_else(|e| panic!("goto {url}: {e}"));
    }

    fn path(&self) -> String {
        let u = self.rt.block_on(self.c().current_url()).expect("url");
        u.path().to_string()
    }

    fn text(&self, css: &str) -> String {
        self.rt
            .block_on(async { self.c().find(Locator::Css(css)).await?.text().await })
            .unwrap_or_else(|e| panic!("text of `{css}` on {}: {e}", self.path()))
    }

    fn attr(&self, css: &str, name: &str) -> Option<String> {
        self.rt
            .block_on(async { self.c().find(Locator::Css(css)).await?.attr(name).await })
            .unwrap_or_else(|e| panic!("attribute {name} of `{css}`: {e}"))
    }

    fn count(&self, css: &str) -> usize {
        self.rt.block_on(self.c().find_all(Locator::Css(css))).map(|v| v.len()).unwrap_or(0)
    }

    fn texts(&self, css: &str) -> Vec<String> {
        self.rt.block_on(async {
            let mut out = Vec::new();
            for e in self.c().find_all(Locator::Css(css)).await.expect("find_all") {
                out.push(e.text().await.expect("text"));
            }
            out
        })
    }

    fn fill(&self, css: &str, value: &str) {
        self.rt
            .block_on(async {
                let e = self.c().find(Locator::Css(css)).await?;
                e.clear().await?;
                e.send_keys(value).await
            })
            .unwrap_or_else(|e| panic!("fill `{css}`: {e}"));
    }

    fn click(&self, css: &str) {
        self.rt
            .block_on(async { self.c().find(Locator::Css(css)).await?.click().await })
            .unwrap_or_else(|e| panic!("click `{css}` on {}: {e}", self.path()));
    }

    fn exec(&self, js: &str) {
        self.rt.block_on(self.c().execute(js, vec![])).unwrap_or_else(|e| panic!("{js}: {e}"));
    }

    /// Runs `act` (a click or a form submit that loads a new page) and waits until the new
    /// document has replaced the old one and finished loading: a WebDriver click returns before
    /// the navigation it starts, so reading the page at once may still read the old one.
    fn navigate(&self, act: impl FnOnce(&Self)) {
        self.exec("window.__bitnetOldPage = true;");
        act(self);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let loaded = self
                .rt
                .block_on(self.c().execute(
                    "return window.__bitnetOldPage !== true && document.readyState === 'complete';",
                    vec![],
                ))
                .ok()
                .and_then(|v| v.as_bool())
                .unwrap_or(false);
            if loaded {
                return;
            }
            assert!(Instant::now() < deadline, "timed out waiting for the next page");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn cookie(&self, name: &str) -> String {
        self.rt
            .block_on(self.c().get_named_cookie(name))
            .unwrap_or_else(|e| panic!("cookie {name}: {e}"))
            .value()
            .to_string()
    }

    fn screenshot(&self, name: &str) {
        let png = self.rt.block_on(self.c().screenshot()).expect("screenshot");
        std::fs::write(self.shots.join(format!("{name}.png")), png).expect("write screenshot");
    }

    /// Waits (without reloading) until the page has an element matching `css`: a click on a
    /// submit button may return before the next page has loaded.
    fn wait_el(&self, css: &str) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while self.count(css) == 0 {
            assert!(Instant::now() < deadline, "timed out waiting for `{css}` on {}", self.path());
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Reloads `path` until `ok` holds, at most `timeout`.
    fn wait_on(&self, path: &str, what: &str, timeout: Duration, ok: impl Fn(&Self) -> bool) {
        let deadline = Instant::now() + timeout;
        loop {
            self.goto(path);
            if ok(self) {
                return;
            }
            assert!(Instant::now() < deadline, "timed out waiting for {what} on {path}");
            std::thread::sleep(Duration::from_millis(500));
        }
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        if let Some(c) = self.client.take() {
            let _ = self.rt.block_on(c.close());
        }
    }
}

/// A worker process that keeps polling when the queue is empty (no `--exit-when-done`).
fn live_worker(dir: &Path, config: &str, id: &str, port: u16) -> Proc {
    let creds = dir.join(format!("{id}.json")).display().to_string();
    let url = format!("http://127.0.0.1:{port}");
    Proc::start(
        id,
        dir,
        &["worker", config, "--no-env", "--coordinator", &url, "--credentials", &creds],
    )
}

fn add_operator(dir: &Path, config: &str) {
    let mut child = Command::new(bitnet_bin())
        .args(["admin", "add", config, "--no-env", "--name", OPERATOR, "--password-stdin"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("bitnet admin add");
    {
        use std::io::Write;
        let mut stdin = child.stdin.take().expect("stdin");
        writeln!(stdin, "{PASSWORD}").expect("password");
    }
    let out = child.wait_with_output().expect("admin add");
    assert!(out.status.success(), "bitnet admin add: {}", String::from_utf8_lossy(&out.stderr));
    let ops = Operators::load(&operators_path(&dir.join("run"))).expect("operators file");
    assert!(ops.operators.contains_key(OPERATOR));
}

fn no_redirects() -> Http {
    Http::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(60))
        .build()
        .expect("client")
}

fn decode_base64(s: &str) -> Vec<u8> {
    let val = |c: u8| match c {
        b'A'..=b'Z' => c - b'A',
        b'a'..=b'z' => c - b'a' + 26,
        b'0'..=b'9' => c - b'0' + 52,
        b'+' => 62,
        _ => 63,
    } as u32;
    let bytes: Vec<u8> = s.bytes().filter(|&c| c != b'=').collect();
    let mut out = Vec::new();
    for chunk in bytes.chunks(4) {
        let acc = chunk.iter().enumerate().fold(0u32, |a, (i, &c)| a | val(c) << (18 - 6 * i));
        for i in 0..chunk.len() - 1 {
            out.push((acc >> (16 - 8 * i)) as u8);
        }
    }
    out
}

const PAGES: [&str; 6] =
    ["/admin/", "/admin/keys", "/admin/tasks", "/admin/logs", "/admin/runs", "/admin/install"];
const ACTIONS: [&str; 8] = [
    "/admin/logout",
    "/admin/workers/drain",
    "/admin/keys/add",
    "/admin/keys/rotate",
    "/admin/keys/revoke",
    "/admin/tasks/seed",
    "/admin/tasks/requeue",
    "/admin/install",
];

#[test]
fn console_in_headless_chromium() {
    let Some(driver_bin) = chromedriver() else {
        let msg = "chromedriver not found: the console's browser tests DID NOT RUN. Install \
                   Debian's chromium and chromium-driver (apt-get install -y chromium \
                   chromium-driver) or set CHROMEDRIVER";
        if std::env::var("CI").is_ok_and(|v| v == "1" || v == "true") {
            panic!("{msg} (CI=1: failing)");
        }
        eprintln!("\n!!!!!!!!!!\n!!! SKIPPED: {msg}\n!!!!!!!!!!\n");
        return;
    };
    let started = Instant::now();
    let tmp = bitnet_tests::temp_dir();
    let dir = tmp.path();
    let port = free_port();
    let config = setup(dir, port, 300);
    add_operator(dir, &config);
    let _coord = Proc::start("coordinator", dir, &["coordinator", &config, "--no-env"]);
    wait_for("the coordinator's URL file", LIMIT, || {
        dir.join("run/coordinator.url").is_file().then_some(())
    });
    let base = format!("http://127.0.0.1:{port}");
    let _w1 = live_worker(dir, &config, "w1", port);
    let mut w2 = live_worker(dir, &config, "w2", port);

    // Without a session, every page and every action redirects to the login form.
    let http = no_redirects();
    for p in PAGES {
        let r = http.get(format!("{base}{p}")).send().expect("get");
        assert_eq!(r.status(), 303, "GET {p} without a session");
        assert_eq!(r.headers()["location"], "/admin/login", "GET {p}");
    }
    for p in ACTIONS {
        let r = http.post(format!("{base}{p}")).form(&[("id", "w1")]).send().expect("post");
        assert_eq!(r.status(), 303, "POST {p} without a session");
        assert_eq!(r.headers()["location"], "/admin/login", "POST {p}");
    }

    let driver_port = free_port();
    let _driver = Driver(
        Command::new(&driver_bin)
            .arg(format!("--port={driver_port}"))
            .stdout(std::fs::File::create(dir.join("chromedriver.log")).expect("log"))
            .stderr(Stdio::null())
            .spawn()
            .expect("start chromedriver"),
    );
    let downloads = dir.join("downloads");
    std::fs::create_dir_all(&downloads).expect("downloads");
    let b = Browser::start(driver_port, &base, &downloads, &dir.join("chromium-profile"));

    // The browser, too, lands on the login form; a wrong password is refused.
    b.goto("/admin/keys");
    assert_eq!(b.path(), "/admin/login");
    b.screenshot("login");
    b.fill("#name", OPERATOR);
    b.fill("#password", "not the password");
    b.navigate(|b| b.click("#login"));
    assert_eq!(b.path(), "/admin/login");
    assert!(b.text("#login-error").contains("Wrong name or password"));
    b.fill("#name", OPERATOR);
    b.fill("#password", PASSWORD);
    b.navigate(|b| b.click("#login"));
    assert_eq!(b.path(), "/admin/", "logged in, on the dashboard");
    let session = b.cookie("bitnet_session");
    assert_eq!(session.len(), 64);

    // The dashboard: two live workers and a loss curve with points, training and validation.
    b.wait_on("/admin/", "two active workers and both loss curves", LIMIT, |b| {
        let active = b.texts("#workers td.state").iter().filter(|s| *s == "active").count();
        let points = |attr: &str| -> usize {
            if b.count("#loss-chart") == 1 {
                b.attr("#loss-chart", attr).and_then(|v| v.parse().ok()).unwrap_or(0)
            } else {
                0
            }
        };
        let (train, val) = (points("data-points"), points("data-validation-points"));
        active == 2
            && train >= 2
            && b.count("#loss-chart circle.pt") == train
            && val >= 1
            && b.count("#loss-chart circle.val") == val
    });
    let version: u64 = b.text("#weight-version").parse().expect("version");
    assert!(version >= 2, "weights moved: version {version}");
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").expect("hostname");
    let hosts = b.texts("#workers td.host");
    assert!(hosts.len() == 2 && hosts.iter().all(|h| h == host.trim()), "{hosts:?}");
    b.screenshot("dashboard");

    // Keys: add one, see its secret once, download its credentials, and they work.
    b.goto("/admin/keys");
    b.screenshot("keys");
    b.fill("#key-id", "w3");
    b.navigate(|b| b.click("#add-key button"));
    b.wait_el("#secret");
    let secret = b.text("#secret");
    assert_eq!(secret.len(), 64, "a fresh 32-byte secret, hex");
    b.screenshot("key-added");
    let href = b.attr("#download-credentials", "href").expect("href");
    let json = decode_base64(href.strip_prefix("data:application/json;base64,").expect("data URL"));
    let creds: serde_json::Value = serde_json::from_slice(&json).expect("credentials JSON");
    assert_eq!(
        (creds["client_id"].as_str(), creds["client_secret"].as_str()),
        (Some("w3"), Some(secret.as_str()))
    );
    b.click("#download-credentials");
    let file = downloads.join("w3.json");
    let saved = wait_for("the credentials download", Duration::from_secs(20), || {
        std::fs::read(&file).ok().filter(|b| !b.is_empty())
    });
    assert_eq!(saved, json, "the downloaded file is the credentials shown");
    let token = http
        .post(format!("{base}/connect/token"))
        .form(&[
            ("grant_type", "client_credentials"),
            ("client_id", "w3"),
            ("client_secret", secret.as_str()),
        ])
        .send()
        .expect("token");
    assert_eq!(token.status(), 200, "the new key logs in");

    // Revoke w2's key: its next request fails and the worker stops.
    b.goto("/admin/keys");
    b.navigate(|b| b.click("tr[data-key='w2'] button.revoke"));
    assert_eq!(b.path(), "/admin/keys");
    assert_eq!(b.text("tr[data-key='w2'] td.state"), "revoked");
    let status = w2.wait(Duration::from_secs(60));
    assert!(!status.success(), "w2 stops with an error once revoked");
    let log = log_of(dir, "w2").to_lowercase();
    assert!(log.contains("unauthorized"), "w2's request was refused: {log}");

    // Tasks: seed more work; filter the queue.
    b.goto("/admin/tasks");
    let total_before = b.text(".pager");
    b.fill("#seed-tokens", "2000");
    b.navigate(|b| b.click("#seed button"));
    b.wait_el("#notice");
    assert!(b.text("#notice").starts_with("Seeded"), "seeding reports what it added");
    assert_ne!(b.text(".pager"), total_before, "the queue grew");
    b.screenshot("tasks");
    b.goto("/admin/tasks?state=done");
    let states = b.texts("#tasks tr td:nth-child(2)");
    assert!(!states.is_empty() && states.iter().all(|s| s == "done"), "filtered: {states:?}");

    // A form posted without its CSRF token is refused, in the browser and from a script.
    let tasks_now = tasks(&store(dir)).len();
    b.goto("/admin/tasks");
    b.navigate(|b| b.exec("document.querySelector('#seed input[name=csrf]').remove(); document.getElementById('seed').submit();"));
    wait_for("the refusal page", Duration::from_secs(20), || {
        (b.count("#message") == 1).then_some(())
    });
    assert!(b.text("#message").contains("CSRF"));
    b.screenshot("csrf-refused");
    let cookie = format!("bitnet_session={session}");
    let r = http
        .post(format!("{base}/admin/tasks/seed"))
        .header("cookie", &cookie)
        .form(&[("tokens", "100")])
        .send()
        .expect("post");
    assert_eq!(r.status(), 403, "no CSRF token");
    let r = http
        .post(format!("{base}/admin/tasks/seed"))
        .header("cookie", &cookie)
        .form(&[("tokens", "100"), ("csrf", "0".repeat(64).as_str())])
        .send()
        .expect("post");
    assert_eq!(r.status(), 403, "a wrong CSRF token");
    assert_eq!(tasks(&store(dir)).len(), tasks_now, "refused posts seeded nothing");

    // Logs: filter by worker, by level and by text.
    b.wait_on("/admin/logs?worker=w1", "w1's log records", LIMIT, |b| b.count("#logs tr.log") > 0);
    b.goto("/admin/logs");
    b.fill("#log-worker", "w1");
    b.fill("#log-text", "done");
    b.navigate(|b| b.click("#log-apply"));
    let rows = b.count("#logs tr.log");
    assert!(rows > 0, "w1 logged finished tasks");
    let workers = b.texts("#logs tr.log td:nth-child(2)");
    assert!(workers.iter().all(|w| w == "w1"), "only w1: {workers:?}");
    let msgs = b.texts("#logs td.msg");
    assert!(msgs.iter().all(|m| m.to_lowercase().contains("done")), "text filter: {msgs:?}");
    b.screenshot("logs");
    b.goto("/admin/logs?level=error&worker=w1");
    assert_eq!(b.count("#logs tr.log"), 0, "w1 logged no errors");

    // Runs: the run's files are offered for download.
    std::fs::write(dir.join("run/summary.json"), b"{\"test\": true}\n").expect("summary");
    b.goto("/admin/runs");
    assert!(b.texts("#files a").contains(&"summary.json".to_string()));
    b.screenshot("runs");
    let r = http
        .get(format!("{base}/admin/runs/summary.json"))
        .header("cookie", &cookie)
        .send()
        .expect("download");
    assert_eq!(r.status(), 200);
    assert_eq!(r.bytes().expect("body").as_ref(), b"{\"test\": true}\n");

    // Drain w1 from the dashboard, then seed work that only the installed worker will take.
    b.goto("/admin/");
    // Submitted from a script: the dashboard refreshes its rows every 3 s, and a pointer click
    // can land on a row just swapped out.
    b.navigate(|b| b.exec("document.querySelector(\"tr[data-worker='w1'] form[action='/admin/workers/drain']\").submit();"));
    b.wait_on("/admin/", "w1 draining", Duration::from_secs(30), |b| {
        b.text("tr[data-worker='w1'] td.state") == "draining"
    });
    b.goto("/admin/tasks");
    b.fill("#seed-tokens", "2000");
    b.navigate(|b| b.click("#seed button"));
    b.wait_el("#notice");
    assert!(b.text("#notice").starts_with("Seeded"));

    // Install: a script for a new worker installs it here, and it completes a task.
    b.goto("/admin/install");
    b.screenshot("install");
    let csrf = b.attr("#install input[name=csrf]", "value").expect("csrf");
    let script = http
        .post(format!("{base}/admin/install"))
        .header("cookie", &cookie)
        .form(&[("id", "w4"), ("endpoint", base.as_str()), ("csrf", csrf.as_str())])
        .send()
        .expect("install script");
    assert_eq!(script.status(), 200);
    let script_path = dir.join("install-w4.sh");
    std::fs::write(&script_path, script.bytes().expect("script")).expect("write script");
    let home = dir.join("home");
    let out = Command::new("bash")
        .arg(&script_path)
        .env("BITNET_HOME", &home)
        .env("BITNET_NO_SYSTEMD", "1")
        .output()
        .expect("run the install script");
    assert!(
        out.status.success(),
        "install script: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("run-worker.sh"));
    let installed = home.join("bin/bitnet");
    assert_eq!(
        std::fs::metadata(&installed).expect("installed binary").len(),
        std::fs::metadata(bitnet_bin()).expect("bitnet").len(),
        "the coordinator served its own executable"
    );
    let log = std::fs::File::create(dir.join("w4.log")).expect("log");
    let mut w4 = Command::new(home.join("w4/run-worker.sh"))
        .env("BITNET_LOG", "info")
        .stdout(log.try_clone().expect("log"))
        .stderr(log)
        .spawn()
        .expect("start the installed worker");
    let s = store(dir);
    let done = wait_for("a task finished by the installed worker", LIMIT, || {
        if let Ok(Some(st)) = w4.try_wait() {
            panic!("the installed worker exited ({st}): {}", log_of(dir, "w4"));
        }
        tasks(&s)
            .into_iter()
            .find(|t| t.state == TaskState::Done && t.worker.as_deref() == Some("w4"))
    });
    assert!(done.applied_version > 0);
    let _ = w4.kill();
    let _ = w4.wait();

    // Logout ends the session.
    b.goto("/admin/");
    b.navigate(|b| b.click("#logout"));
    b.wait_el("#login");
    assert_eq!(b.path(), "/admin/login");
    b.goto("/admin/tasks");
    assert_eq!(b.path(), "/admin/login", "the old session is gone");
    let r = http.get(format!("{base}/admin/")).header("cookie", &cookie).send().expect("get");
    assert_eq!(r.status(), 303, "the old cookie no longer works");
    eprintln!("console browser test took {:.1} s", started.elapsed().as_secs_f64());
}

/// The admin API in-process: an operator's token (scope `admin`) runs the same functions as
/// the console; worker tokens cannot use it, and admin tokens cannot use the worker protocol.
#[test]
fn admin_api_needs_an_operator_token_and_drives_the_coordinator() {
    let dir = bitnet_tests::temp_dir();
    let registry = dist::registry();
    let config = dist::tiny_config(dir.path(), &["transport.type=http"]);
    let c = dist::start_coordinator(&config, &registry, dist::pattern_corpus(1, 640), 0, 64);
    let mut ops = Operators::default();
    ops.add(OPERATOR, PASSWORD, false).expect("operator");
    ops.save(&operators_path(dir.path())).expect("save");
    let api: Arc<dyn CoordinatorApi> = Arc::clone(&c) as Arc<dyn CoordinatorApi>;
    let mut ctx = bitnet_runtime::auth::serve_context(api, Arc::clone(c.store()));
    ctx.admin = Some(Arc::new(Admin::new(Arc::clone(&c), &config).expect("admin")));
    let server = build_transport(&config, &registry).expect("transport").serve(ctx).expect("serve");
    let base = server.endpoint();
    let http = no_redirects();
    let token = |id: &str, secret: &str, scope: Option<&str>| {
        let mut form = vec![
            ("grant_type", "client_credentials"),
            ("client_id", id),
            ("client_secret", secret),
        ];
        if let Some(s) = scope {
            form.push(("scope", s));
        }
        http.post(format!("{base}/connect/token")).form(&form).send().expect("token")
    };
    let bearer = |r: reqwest::blocking::Response| -> String {
        assert_eq!(r.status(), 200);
        let v: serde_json::Value = r.json().expect("json");
        v["access_token"].as_str().expect("token").to_string()
    };

    assert_eq!(token(OPERATOR, "wrong password!!", Some("admin")).status(), 401);
    assert_eq!(token(OPERATOR, PASSWORD, Some("root")).status(), 422, "unknown scope");
    let admin = bearer(token(OPERATOR, PASSWORD, Some("admin")));
    let w1 = dist::add_client(&c, "w1");
    let worker = bearer(token("w1", &w1.client_secret, None));

    let get =
        |path: &str, t: &str| http.get(format!("{base}{path}")).bearer_auth(t).send().expect("get");
    assert_eq!(http.get(format!("{base}/admin/api/workers")).send().expect("get").status(), 401);
    assert_eq!(
        get("/admin/api/workers", &worker).status(),
        403,
        "a worker's token has no admin scope"
    );
    assert_eq!(get("/work", &admin).status(), 401, "an admin token is not a worker's");

    c.register(
        "w1",
        bitnet_framework::protocol::Registration {
            threads: 1,
            tokens_per_sec: 1000.0,
            framework_version: "test".into(),
            layout_fingerprint: bitnet_runtime::run::assemble::kernel_and_context(
                &config, &registry,
            )
            .expect("kernel")
            .0
            .layout()
            .fingerprint(),
            host: "cab-7".into(),
        },
    )
    .expect("register");
    let workers: serde_json::Value = get("/admin/api/workers", &admin).json().expect("json");
    assert_eq!(workers[0]["record"]["id"], "w1");
    assert_eq!(workers[0]["record"]["state"], "active");
    assert_eq!(workers[0]["record"]["host"], "cab-7", "the host the worker registered with");

    let before = c.store().counts().expect("counts").total_tokens;
    let r = http
        .post(format!("{base}/admin/api/tasks/seed"))
        .bearer_auth(&admin)
        .json(&serde_json::json!({ "tokens": 256 }))
        .send()
        .expect("seed");
    assert_eq!(r.status(), 200);
    let rep: serde_json::Value = r.json().expect("json");
    assert_eq!(rep["tokens"], 256);
    assert_eq!(c.store().counts().expect("counts").total_tokens, before + 256);
    let bad = http
        .post(format!("{base}/admin/api/tasks/seed"))
        .bearer_auth(&admin)
        .json(&serde_json::json!({ "tokens": -1 }))
        .send()
        .expect("seed");
    assert_eq!(bad.status(), 422, "a negative token count is refused");

    let page: serde_json::Value =
        get("/admin/api/tasks?state=pending&limit=2", &admin).json().expect("json");
    assert_eq!(page["tasks"].as_array().map(Vec::len), Some(2));
    assert!(page["total"].as_u64().expect("total") > 2);
    assert_eq!(get("/admin/api/tasks?state=bogus", &admin).status(), 422);
    assert_eq!(get("/admin/api/tasks?limit=0", &admin).status(), 422);

    let drain = http
        .post(format!("{base}/admin/api/workers/w1/drain"))
        .bearer_auth(&admin)
        .send()
        .expect("drain");
    assert_eq!(drain.status(), 204);
    assert!(c.claim("w1").expect("claim").is_none(), "a drained worker gets no task");
    let missing = http
        .post(format!("{base}/admin/api/workers/nobody/drain"))
        .bearer_auth(&admin)
        .send()
        .expect("drain");
    assert_eq!(missing.status(), 404);

    let added =
        http.post(format!("{base}/admin/api/keys/w9")).bearer_auth(&admin).send().expect("add");
    assert_eq!(added.status(), 201);
    let creds: serde_json::Value = added.json().expect("json");
    let w9 = creds["client_secret"].as_str().expect("secret").to_string();
    assert_eq!(token("w9", &w9, None).status(), 200, "the added key logs in");
    let again =
        http.post(format!("{base}/admin/api/keys/w9")).bearer_auth(&admin).send().expect("add");
    assert_eq!(again.status(), 409, "an existing key is rotated, not re-added");
    let rotated: serde_json::Value = http
        .post(format!("{base}/admin/api/keys/w9/rotate"))
        .bearer_auth(&admin)
        .send()
        .expect("rotate")
        .json()
        .expect("json");
    assert_eq!(token("w9", &w9, None).status(), 401, "the old secret is dead");
    let new = rotated["client_secret"].as_str().expect("secret");
    assert_eq!(token("w9", new, None).status(), 200);

    let revoke = http
        .post(format!("{base}/admin/api/keys/w1/revoke"))
        .bearer_auth(&admin)
        .send()
        .expect("revoke");
    assert_eq!(revoke.status(), 204);
    assert_eq!(get("/work", &worker).status(), 401, "the revoked worker's token dies at once");

    // Removing the operator ends their admin token.
    let mut ops = Operators::load(&operators_path(dir.path())).expect("load");
    ops.remove(OPERATOR).expect("remove");
    ops.save(&operators_path(dir.path())).expect("save");
    assert_eq!(get("/admin/api/workers", &admin).status(), 401);
    server.shutdown();
}
