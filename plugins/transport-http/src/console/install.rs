//! The worker bootstrap script of the console's Install page: bash that fetches a token with
//! the worker's credentials, downloads the coordinator's own executable (`GET /install/bitnet`)
//! and the run's config (`GET /install/config.toml`), installs the credentials and the CA, and
//! installs and starts `bitnet-worker@ID` when systemd runs.

use bitnet_framework::transport::Credentials;

/// The worker unit the script installs (also in `deploy/systemd/`).
pub const WORKER_UNIT: &str = include_str!("../../../../deploy/systemd/bitnet-worker@.service");

/// Quotes `s` for bash (single quotes; `'` as `'\''`).
fn sh_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// A here-document delimiter that `body` does not contain.
fn delimiter(base: &str, body: &str) -> String {
    let mut d = base.to_string();
    while body.lines().any(|l| l == d) {
        d.push('_');
    }
    d
}

fn heredoc(path_expr: &str, base: &str, body: &str) -> String {
    let d = delimiter(base, body);
    let body = body.trim_end_matches('\n');
    format!("cat > {path_expr} <<'{d}'\n{body}\n{d}\n")
}

/// The bootstrap script for the worker of `credentials`, talking to `endpoint`.
pub fn script(endpoint: &str, credentials: &Credentials) -> String {
    let id = &credentials.client_id;
    let creds_json = serde_json::to_string_pretty(credentials).unwrap_or_default();
    let mut s = String::new();
    s.push_str(&format!(
        "#!/usr/bin/env bash\n\
         # bitnet worker bootstrap for `{id}`, made by the coordinator's console.\n\
         # It holds the worker's secret: keep it private and delete it after use.\n\
         #   BITNET_HOME=DIR      install under DIR (default /opt/bitnet as root, else\n\
         #                        ~/.local/share/bitnet)\n\
         #   BITNET_NO_SYSTEMD=1  do not install or start a systemd unit\n\
         set -euo pipefail\n\
         umask 077\n\
         ENDPOINT={endpoint}\n\
         WORKER_ID={id_q}\n\
         if [ -z \"${{BITNET_HOME:-}}\" ]; then\n\
         \x20 if [ \"$(id -u)\" = 0 ]; then BITNET_HOME=/opt/bitnet; else BITNET_HOME=\"$HOME/.local/share/bitnet\"; fi\n\
         fi\n\
         command -v curl >/dev/null || {{ echo 'install: curl is required' >&2; exit 1; }}\n\
         DIR=\"$BITNET_HOME/$WORKER_ID\"\n\
         mkdir -p \"$BITNET_HOME/bin\" \"$DIR\"\n\
         chmod 755 \"$BITNET_HOME\" \"$BITNET_HOME/bin\" \"$DIR\"\n",
        endpoint = sh_quote(endpoint.trim_end_matches('/')),
        id_q = sh_quote(id),
    ));
    s.push_str(&heredoc("\"$DIR/credentials.json\"", "BITNET_CREDENTIALS", &creds_json));
    s.push_str("chmod 600 \"$DIR/credentials.json\"\n");
    s.push_str("CURL=(curl -fsS --retry 5 --retry-connrefused --proto =https,http)\n");
    match &credentials.ca_certificate {
        Some(ca) => {
            s.push_str(&heredoc("\"$DIR/ca.pem\"", "BITNET_CA", ca));
            s.push_str("chmod 644 \"$DIR/ca.pem\"\nCURL+=(--cacert \"$DIR/ca.pem\")\n");
        }
        None => s.push_str(
            "# No CA in the credentials: curl trusts the system's roots (or plain HTTP on \
             loopback).\n",
        ),
    }
    // printf is a shell builtin: the secret is on no process's command line, and the file
    // has no trailing newline (curl would send it as part of the secret).
    s.push_str(&format!(
        "printf '%s' {} > \"$DIR/.secret\"\n",
        sh_quote(&credentials.client_secret)
    ));
    s.push_str(
        "TOKEN_JSON=$(\"${CURL[@]}\" --data grant_type=client_credentials \\\n\
         \x20 --data-urlencode \"client_id=$WORKER_ID\" --data-urlencode \"client_secret@$DIR/.secret\" \\\n\
         \x20 \"$ENDPOINT/connect/token\")\n\
         rm -f \"$DIR/.secret\"\n\
         TOKEN=$(printf '%s' \"$TOKEN_JSON\" | sed -n 's/.*\"access_token\":\"\\([^\"]*\\)\".*/\\1/p')\n\
         [ -n \"$TOKEN\" ] || { echo 'install: the coordinator issued no token' >&2; exit 1; }\n\
         # The token goes in a header file, not on the command line.\n\
         printf 'Authorization: Bearer %s\\n' \"$TOKEN\" > \"$DIR/.auth\"\n\
         trap 'rm -f \"$DIR/.auth\"' EXIT\n\
         \"${CURL[@]}\" -H @\"$DIR/.auth\" -o \"$BITNET_HOME/bin/bitnet.part\" \"$ENDPOINT/install/bitnet\"\n\
         chmod 755 \"$BITNET_HOME/bin/bitnet.part\"\n\
         mv -f \"$BITNET_HOME/bin/bitnet.part\" \"$BITNET_HOME/bin/bitnet\"\n\
         \"${CURL[@]}\" -H @\"$DIR/.auth\" -o \"$DIR/worker.toml\" \"$ENDPOINT/install/config.toml\"\n\
         chmod 644 \"$DIR/worker.toml\"\n\
         printf 'BITNET_COORDINATOR=%s\\n' \"$ENDPOINT\" > \"$DIR/env\"\n\
         chmod 644 \"$DIR/env\"\n",
    );
    s.push_str(
        "cat > \"$DIR/run-worker.sh\" <<BITNET_RUN\n\
         #!/usr/bin/env bash\n\
         # Runs this worker in the foreground (extra arguments are passed on).\n\
         cd \"$DIR\" && exec \"$BITNET_HOME/bin/bitnet\" worker \"$DIR/worker.toml\" --no-env \\\\\n\
         \x20 --coordinator \"$ENDPOINT\" --credentials \"$DIR/credentials.json\" \"\\$@\"\n\
         BITNET_RUN\n\
         chmod 700 \"$DIR/run-worker.sh\"\n\
         \"$BITNET_HOME/bin/bitnet\" --version >/dev/null\n",
    );
    s.push_str("if [ -z \"${BITNET_NO_SYSTEMD:-}\" ] && [ \"$(id -u)\" = 0 ] && [ -d /run/systemd/system ] \\\n  && [ \"$BITNET_HOME\" = /opt/bitnet ]; then\n");
    s.push_str(&heredoc("/etc/systemd/system/bitnet-worker@.service", "BITNET_UNIT", WORKER_UNIT));
    s.push_str(
        "  systemctl daemon-reload\n\
         \x20 systemctl enable --now \"bitnet-worker@$WORKER_ID\"\n\
         \x20 echo \"installed and started bitnet-worker@$WORKER_ID (journalctl -u bitnet-worker@$WORKER_ID)\"\n\
         else\n\
         \x20 echo \"installed under $DIR; no systemd unit (not root, no systemd, BITNET_HOME set or BITNET_NO_SYSTEMD)\"\n\
         \x20 echo \"start the worker with: $DIR/run-worker.sh\"\n\
         fi\n",
    );
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoting_survives_hostile_values() {
        assert_eq!(sh_quote("a'b"), r"'a'\''b'");
        assert_eq!(delimiter("EOF", "x\nEOF\ny"), "EOF_");
        let c = Credentials {
            client_id: "w1".into(),
            client_secret: "s3cr3t".into(),
            ca_certificate: Some(
                "-----BEGIN CERTIFICATE-----\nAA\n-----END CERTIFICATE-----\n".into(),
            ),
        };
        let s = script("https://10.0.0.5:8443/", &c);
        assert!(s.starts_with("#!/usr/bin/env bash\n"));
        assert!(s.contains("ENDPOINT='https://10.0.0.5:8443'"));
        assert!(s.contains("--cacert"));
        assert!(s.contains("[Service]"), "the unit is embedded");
        assert!(!s.contains("client_secret=s3cr3t"), "the secret never goes on a command line");
    }
}
