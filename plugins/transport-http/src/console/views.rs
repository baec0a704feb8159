//! The console's pages, rendered on the server with maud. Every form carries the session's
//! CSRF token; the only script is [`SCRIPT`], which refreshes the dashboard's live part.

use super::chart::loss_chart;
use super::session::SessionView;
use bitnet_framework::admin::{KeyView, Overview, RunFile, WorkerView};
use bitnet_framework::coordinator_store::{LogPage, LogQuery, TaskPage, TaskQuery, TaskState};
use bitnet_framework::protocol::now_ms;
use bitnet_framework::transport::Credentials;
use maud::{DOCTYPE, Markup, PreEscaped, html};

/// The console's one script (served as `/admin/console.js`): refreshes `#live` every 3 s (not
/// while the pointer is on one of its buttons, which would be swapped under it) and reloads the
/// page (to the login form) when the session has ended.
pub const SCRIPT: &str = r#"(function () {
  var live = document.getElementById('live');
  if (!live) return;
  setInterval(function () {
    if (live.querySelector('form:hover, button:focus')) return;
    fetch('/admin/live', { redirect: 'manual', credentials: 'same-origin' }).then(function (r) {
      if (r.status !== 200) { location.reload(); return null; }
      return r.text();
    }).then(function (t) { if (t !== null) live.innerHTML = t; });
  }, 3000);
})();
"#;

const CSS: &str = "
body{font:14px/1.4 system-ui,sans-serif;margin:0;color:#222}
nav{background:#1d2733;padding:8px 16px;display:flex;gap:14px;align-items:center}
nav a{color:#dfe6ee;text-decoration:none}nav a.on{color:#fff;font-weight:600}
nav .who{margin-left:auto;color:#9fb0c2}
main{padding:12px 16px;max-width:1100px}
table{border-collapse:collapse;margin:8px 0}td,th{border-bottom:1px solid #ddd;padding:4px 8px;text-align:left}
.figures{display:flex;gap:18px;flex-wrap:wrap}.figures div{background:#f3f5f8;padding:8px 12px;border-radius:4px}
.figures b{display:block;font-size:18px}
form.inline{display:inline}.muted{color:#777}.err{color:#a00}.ok{color:#070}
.secret{font-family:monospace;background:#fff6d5;padding:6px;word-break:break-all}
";

/// The page frame: navigation (with logout) when logged in.
pub fn layout(title: &str, session: Option<&SessionView>, current: &str, body: Markup) -> Markup {
    let tabs = [
        ("/admin/", "Dashboard"),
        ("/admin/keys", "Keys"),
        ("/admin/tasks", "Tasks"),
        ("/admin/logs", "Logs"),
        ("/admin/runs", "Runs"),
        ("/admin/install", "Install"),
    ];
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                title { (title) " · bitnet console" }
                style { (PreEscaped(CSS)) }
            }
            body {
                @if let Some(s) = session {
                    nav {
                        @for (href, name) in tabs {
                            a href=(href) class=[(href == current).then_some("on")] { (name) }
                        }
                        span class="who" { (s.operator) }
                        form.inline method="post" action="/admin/logout" {
                            (csrf(s))
                            button type="submit" id="logout" { "Log out" }
                        }
                    }
                }
                main {
                    h1 { (title) }
                    (body)
                }
                script src="/admin/console.js" {}
            }
        }
    }
}

/// The hidden CSRF field of a form.
pub fn csrf(s: &SessionView) -> Markup {
    html! { input type="hidden" name="csrf" value=(s.csrf); }
}

/// The login form; `error` shown above it.
pub fn login(token: &str, error: Option<&str>) -> Markup {
    layout(
        "Log in",
        None,
        "",
        html! {
            @if let Some(e) = error { p.err id="login-error" { (e) } }
            form method="post" action="/admin/login" {
                input type="hidden" name="csrf" value=(token);
                p { label { "Operator " input type="text" name="name" id="name" autocomplete="username" required; } }
                p { label { "Password " input type="password" name="password" id="password" autocomplete="current-password" required; } }
                button type="submit" id="login" { "Log in" }
            }
            p.muted { "Operators are added on the coordinator machine with " code { "bitnet admin add" } "." }
        },
    )
}

/// A message page (an action's outcome, an error).
pub fn message(s: &SessionView, title: &str, text: &str, back: &str) -> Markup {
    layout(title, Some(s), "", html! { p id="message" { (text) } p { a href=(back) { "Back" } } })
}

fn ago(ts_ms: u64) -> String {
    if ts_ms == 0 {
        return "never".into();
    }
    let secs = now_ms().saturating_sub(ts_ms) / 1000;
    match secs {
        0..=119 => format!("{secs} s ago"),
        120..=7199 => format!("{} min ago", secs / 60),
        _ => format!("{} h ago", secs / 3600),
    }
}

/// The dashboard (its live part inside `#live`).
pub fn dashboard(s: &SessionView, o: &Overview, workers: &[WorkerView]) -> Markup {
    layout(
        &format!("Dashboard: {}", o.run_name),
        Some(s),
        "/admin/",
        html! { div id="live" { (live(s, o, workers)) } },
    )
}

/// The dashboard's live part, refreshed by the script.
pub fn live(s: &SessionView, o: &Overview, workers: &[WorkerView]) -> Markup {
    let st = &o.status;
    let t = &st.tasks;
    let progress =
        if t.total_tokens > 0 { 100.0 * t.done_tokens as f64 / t.total_tokens as f64 } else { 0.0 };
    html! {
        div.figures {
            div { "weight version" b id="weight-version" { (st.weight_version) } }
            div { "tokens/s" b id="tokens-per-sec" { (format!("{:.0}", st.tokens_per_sec)) } }
            div { "recent loss" b { (st.recent_loss.map_or("-".to_string(), |l| format!("{l:.4}"))) } }
            div { "queue (pending / assigned / done / failed)" b id="queue" { (t.pending) " / " (t.assigned) " / " (t.done) " / " (t.failed) } }
            div { "tokens done" b { (t.done_tokens) " of " (t.total_tokens) (format!(" ({progress:.1}%)")) } }
            div { "open round" b id="round" { (o.round_updates) " in, " (o.round_missing) " waited for" } }
            div { "workers (active / draining / gone)" b { (st.workers.active) " / " (st.workers.draining) " / " (st.workers.gone) } }
        }
        h2 { "Loss" }
        (loss_chart(&o.loss, &o.validation))
        p.muted { "Blue: each applied update (weight version, mean training loss). Orange: the validation loss of the weights, measured every coordinator.eval_every_secs (also in metrics.jsonl)." }
        h2 { "Workers" }
        table id="workers" {
            tr { th { "worker" } th { "host" } th { "state" } th { "threads" } th { "tokens/s" } th { "last heartbeat" } th { "current task" } th { "" } }
            @for w in workers {
                tr data-worker=(w.record.id) {
                    td { (w.record.id) }
                    td class="host" { @if w.record.host.is_empty() { "-" } @else { (w.record.host) } }
                    td class="state" { (w.record.state.as_str()) @if w.revoked { " (revoked)" } }
                    td { (w.record.threads) }
                    td { (format!("{:.0}", w.record.throughput())) }
                    td { (ago(w.record.last_seen_ms)) }
                    td { @if w.current_tasks.is_empty() { "-" } @else { (w.current_tasks.iter().map(u64::to_string).collect::<Vec<_>>().join(", ")) } }
                    td {
                        form.inline method="post" action="/admin/workers/drain" { (csrf(s)) input type="hidden" name="id" value=(w.record.id); button { "Drain" } }
                        " "
                        form.inline method="post" action="/admin/keys/rotate" { (csrf(s)) input type="hidden" name="id" value=(w.record.id); button { "Rotate" } }
                        " "
                        form.inline method="post" action="/admin/keys/revoke" { (csrf(s)) input type="hidden" name="id" value=(w.record.id); button class="revoke" { "Revoke" } }
                    }
                }
            }
        }
        @if workers.is_empty() { p.muted { "No worker has registered yet." } }
    }
}

/// The keys page.
pub fn keys(s: &SessionView, keys: &[KeyView]) -> Markup {
    layout(
        "Keys",
        Some(s),
        "/admin/keys",
        html! {
            form method="post" action="/admin/keys/add" id="add-key" {
                (csrf(s))
                label { "New key id " input type="text" name="id" id="key-id" required pattern="[A-Za-z0-9._-]{1,64}"; }
                " " button type="submit" { "Add key" }
            }
            table id="keys" {
                tr { th { "id" } th { "generation" } th { "state" } th { "created" } th { "" } }
                @for k in keys {
                    tr data-key=(k.id) {
                        td { (k.id) } td { (k.generation) }
                        td class="state" { @if k.revoked { "revoked" } @else { "active" } }
                        td { (ago(k.created_ms)) }
                        td {
                            form.inline method="post" action="/admin/keys/rotate" { (csrf(s)) input type="hidden" name="id" value=(k.id); button { "Rotate" } }
                            " "
                            @if !k.revoked {
                                form.inline method="post" action="/admin/keys/revoke" { (csrf(s)) input type="hidden" name="id" value=(k.id); button class="revoke" { "Revoke" } }
                            }
                        }
                    }
                }
            }
        },
    )
}

/// Standard base64 with padding (for the credentials download's `data:` URL).
pub fn base64(bytes: &[u8]) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [chunk[0], *chunk.get(1).unwrap_or(&0), *chunk.get(2).unwrap_or(&0)];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(T[(n >> (18 - 6 * i)) as usize & 63] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// A new or rotated key's secret, shown once, with its credentials file to download.
pub fn secret_once(s: &SessionView, title: &str, c: &Credentials) -> Markup {
    let json = serde_json::to_string_pretty(c).unwrap_or_default();
    let href = format!("data:application/json;base64,{}", base64(json.as_bytes()));
    layout(
        title,
        Some(s),
        "/admin/keys",
        html! {
            p { "Key " b { (c.client_id) } ". Its secret is shown this once; the coordinator keeps only a hash." }
            p.secret id="secret" { (c.client_secret) }
            p { a id="download-credentials" href=(href) download=(format!("{}.json", c.client_id)) { "Download the credentials file (" (c.client_id) ".json)" } }
            @if c.ca_certificate.is_none() { p.muted { "No CA in the file: set coordinator.ca_file for workers to pin the coordinator's certificate." } }
            p { "On the worker: " code { "bitnet worker CONFIG --coordinator URL --credentials " (c.client_id) ".json" } ", or use Install." }
            p { a href="/admin/keys" { "Back to keys" } }
        },
    )
}

fn state_options(selected: Option<TaskState>) -> Markup {
    let states = [TaskState::Pending, TaskState::Assigned, TaskState::Done, TaskState::Failed];
    html! {
        select name="state" id="task-state" {
            option value="" selected[selected.is_none()] { "any state" }
            @for st in states { option value=(st.as_str()) selected[selected == Some(st)] { (st.as_str()) } }
        }
    }
}

fn pager(base: &str, offset: u64, limit: u64, total: u64) -> Markup {
    let sep = if base.contains('?') { '&' } else { '?' };
    html! {
        p.pager {
            (format!("{}-{} of {total}", (offset + 1).min(total), (offset + limit).min(total)))
            @if offset > 0 { " " a rel="prev" href=(format!("{base}{sep}offset={}", offset.saturating_sub(limit))) { "previous" } }
            @if offset + limit < total { " " a rel="next" href=(format!("{base}{sep}offset={}", offset + limit)) { "next" } }
        }
    }
}

fn query_string(pairs: &[(&str, Option<&str>)]) -> String {
    let parts: Vec<String> = pairs
        .iter()
        .filter_map(|(k, v)| v.filter(|v| !v.is_empty()).map(|v| format!("{k}={}", url_encode(v))))
        .collect();
    parts.join("&")
}

/// Percent-encodes a query value.
pub fn url_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// The task queue.
pub fn tasks(s: &SessionView, q: &TaskQuery, page: &TaskPage, notice: Option<&str>) -> Markup {
    let qs =
        query_string(&[("state", q.state.map(TaskState::as_str)), ("worker", q.worker.as_deref())]);
    layout(
        "Tasks",
        Some(s),
        "/admin/tasks",
        html! {
            @if let Some(n) = notice { p.ok id="notice" { (n) } }
            form method="get" action="/admin/tasks" id="task-filter" {
                (state_options(q.state)) " "
                input type="text" name="worker" placeholder="worker" value=(q.worker.clone().unwrap_or_default());
                " " button type="submit" { "Filter" }
            }
            table id="tasks" {
                tr { th { "id" } th { "state" } th { "worker" } th { "shard" } th { "offset" } th { "tokens" } th { "attempts" } th { "version" } }
                @for t in &page.tasks {
                    tr { td { (t.id) } td { (t.state.as_str()) } td { (t.worker.clone().unwrap_or_default()) } td { (t.shard) } td { (t.offset) } td { (t.tokens) } td { (t.attempts) } td { (t.applied_version) } }
                }
            }
            (pager(&format!("/admin/tasks?{qs}"), q.offset, q.limit, page.total))
            h2 { "Seed more work" }
            form method="post" action="/admin/tasks/seed" id="seed" {
                (csrf(s))
                label { "Tokens (0 = one epoch) " input type="number" name="tokens" id="seed-tokens" min="0" value="0"; }
                " " button type="submit" { "Seed" }
            }
            h2 { "Failed tasks" }
            form method="post" action="/admin/tasks/requeue" id="requeue" {
                (csrf(s)) button type="submit" { "Requeue failed tasks" }
            }
        },
    )
}

/// The worker logs.
pub fn logs(s: &SessionView, q: &LogQuery, page: &LogPage) -> Markup {
    let qs = query_string(&[
        ("worker", q.worker.as_deref()),
        ("level", q.level.as_deref()),
        ("text", q.text.as_deref()),
    ]);
    let levels = ["error", "warn", "info", "debug"];
    layout(
        "Logs",
        Some(s),
        "/admin/logs",
        html! {
            form method="get" action="/admin/logs" id="log-filter" {
                input type="text" name="worker" id="log-worker" placeholder="worker" value=(q.worker.clone().unwrap_or_default());
                " "
                select name="level" id="log-level" {
                    option value="" selected[q.level.is_none()] { "any level" }
                    @for l in levels { option value=(l) selected[q.level.as_deref() == Some(l)] { (l) } }
                }
                " "
                input type="text" name="text" id="log-text" placeholder="text" value=(q.text.clone().unwrap_or_default());
                " " button type="submit" id="log-apply" { "Filter" }
            }
            table id="logs" {
                tr { th { "time" } th { "worker" } th { "level" } th { "message" } }
                @for r in &page.records {
                    tr class="log" { td { (ago(r.ts_ms)) } td { (r.worker) } td { (r.level) } td class="msg" { (r.message) } }
                }
            }
            (pager(&format!("/admin/logs?{qs}"), q.offset, q.limit, page.total))
        },
    )
}

/// The run's files.
pub fn runs(s: &SessionView, files: &[RunFile]) -> Markup {
    layout(
        "Runs",
        Some(s),
        "/admin/runs",
        html! {
            @if files.is_empty() {
                p.muted id="no-files" { "Nothing to download yet: metrics.jsonl, summary.json and checkpoints appear in the run directory as the run writes them." }
            } @else {
                table id="files" {
                    tr { th { "file" } th { "bytes" } }
                    @for f in files { tr { td { a href=(format!("/admin/runs/{}", url_encode(&f.name))) download=(f.name) { (f.name) } } td { (f.bytes) } } }
                }
            }
        },
    )
}

/// The install page: pick a worker, get its bootstrap script.
pub fn install(s: &SessionView, endpoint: &str, keys: &[KeyView]) -> Markup {
    layout(
        "Install a worker",
        Some(s),
        "/admin/install",
        html! {
            p { "The script downloads this coordinator's own executable and the run's config, installs the worker's credentials (with the CA, when set) under the install directory, and installs and starts a systemd unit when systemd runs (otherwise it prints the command to start the worker). Making a script gives the worker a fresh secret: a key that exists is rotated, so its running worker must be reinstalled." }
            form method="post" action="/admin/install" id="install" {
                (csrf(s))
                p { label { "Worker id " input type="text" name="id" id="install-id" required pattern="[A-Za-z0-9._-]{1,64}" list="known-keys"; } }
                datalist id="known-keys" { @for k in keys { option value=(k.id) {} } }
                p { label { "Coordinator URL, as the worker reaches it " input type="url" name="endpoint" id="install-endpoint" size="40" value=(endpoint) required; } }
                button type="submit" { "Download the install script" }
            }
            p { "Run it on the worker machine as root for a system-wide install (" code { "/opt/bitnet" } ", a systemd unit), or as any user with " code { "BITNET_HOME=DIR" } "." }
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_matches_the_standard() {
        assert_eq!(base64(b""), "");
        assert_eq!(base64(b"f"), "Zg==");
        assert_eq!(base64(b"fo"), "Zm8=");
        assert_eq!(base64(b"foo"), "Zm9v");
        assert_eq!(base64(b"w1:s3"), "dzE6czM=");
    }

    #[test]
    fn queries_are_encoded() {
        assert_eq!(url_encode("a b&c"), "a%20b%26c");
        assert_eq!(query_string(&[("a", Some("x")), ("b", None), ("c", Some(""))]), "a=x");
    }
}
