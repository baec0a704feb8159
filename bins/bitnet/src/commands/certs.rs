//! `bitnet certs init`: a private CA and a server certificate for the coordinator (rcgen), so a
//! fleet gets TLS without OpenSSL or a public CA. Workers pin the CA: `bitnet keys add` writes
//! it into their credentials file.

use anyhow::Context;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};
use std::net::IpAddr;
use std::path::{Path, PathBuf};

/// Certificate commands.
#[derive(Debug, clap::Subcommand)]
pub enum CertsCommand {
    /// Make a CA (`ca.pem`, `ca.key`) and a coordinator certificate signed by it
    /// (`server.pem`, `server.key`) valid for the given names and addresses.
    Init(InitArgs),
}

/// `bitnet certs init` arguments.
#[derive(Debug, clap::Args)]
pub struct InitArgs {
    /// Folder to write into (created; keys are owner-only).
    #[arg(long, default_value = "tls")]
    pub out: PathBuf,
    /// DNS names workers reach the coordinator by (repeatable).
    #[arg(long = "name", value_name = "DNS")]
    pub names: Vec<String>,
    /// IP addresses workers reach the coordinator by (repeatable).
    #[arg(long = "ip", value_name = "IP")]
    pub ips: Vec<IpAddr>,
    /// Replace certificates already in the folder.
    #[arg(long)]
    pub force: bool,
}

/// The PEM texts `init` writes.
pub struct Issued {
    /// CA certificate (give it to workers).
    pub ca_pem: String,
    /// CA private key (keep it; it signs new server certificates).
    pub ca_key: String,
    /// Server certificate.
    pub server_pem: String,
    /// Server private key.
    pub server_key: String,
}

/// A CA and a server certificate for `names` and `ips`.
pub fn issue(names: &[String], ips: &[IpAddr]) -> anyhow::Result<Issued> {
    anyhow::ensure!(
        !names.is_empty() || !ips.is_empty(),
        "give at least one --name or --ip the coordinator is reached by"
    );
    let ca_key = KeyPair::generate().context("generating the CA key")?;
    let mut ca = CertificateParams::default();
    ca.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca.distinguished_name.push(DnType::CommonName, "bitnet fleet CA");
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca_cert = ca.self_signed(&ca_key).context("signing the CA certificate")?;
    let ca_pem = ca_cert.pem();
    let ca_key_pem = ca_key.serialize_pem();
    let issuer = Issuer::new(ca, ca_key);

    let server_key = KeyPair::generate().context("generating the server key")?;
    let mut server = CertificateParams::default();
    server.distinguished_name.push(DnType::CommonName, "bitnet coordinator");
    for n in names {
        let dns = n.clone().try_into().with_context(|| format!("`{n}` is not a DNS name"))?;
        server.subject_alt_names.push(SanType::DnsName(dns));
    }
    server.subject_alt_names.extend(ips.iter().map(|ip| SanType::IpAddress(*ip)));
    server.key_usages = vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::KeyEncipherment];
    server.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let server_cert =
        server.signed_by(&server_key, &issuer).context("signing the server certificate")?;
    Ok(Issued {
        ca_pem,
        ca_key: ca_key_pem,
        server_pem: server_cert.pem(),
        server_key: server_key.serialize_pem(),
    })
}

/// Writes `issued` into `dir`: certificates 0644, keys owner-only, none through a symlink.
pub fn write(dir: &Path, issued: &Issued, force: bool) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let files = [
        ("ca.pem", &issued.ca_pem),
        ("ca.key", &issued.ca_key),
        ("server.pem", &issued.server_pem),
        ("server.key", &issued.server_key),
    ];
    if !force && let Some((name, _)) = files.iter().find(|(n, _)| dir.join(n).exists()) {
        anyhow::bail!("{} exists; pass --force to replace it", dir.join(name).display());
    }
    for (name, text) in files {
        let path = dir.join(name);
        bitnet_framework::files::write_private(&path, text.as_bytes())
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

/// Runs a certs command.
pub fn run(cmd: CertsCommand) -> anyhow::Result<()> {
    match cmd {
        CertsCommand::Init(args) => {
            let issued = issue(&args.names, &args.ips)?;
            write(&args.out, &issued, args.force)?;
            let out = args.out.display();
            println!("wrote {out}/ca.pem, ca.key, server.pem and server.key");
            println!("coordinator config:");
            println!(
                "  [transport]\n  tls_cert_file = \"{out}/server.pem\"\n  tls_key_file = \"{out}/server.key\""
            );
            println!("workers: `bitnet keys add --ca {out}/ca.pem --out worker.json` pins this CA");
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn issues_a_ca_and_a_server_certificate_and_refuses_to_overwrite() {
        let issued =
            issue(&["coord.example".into()], &["127.0.0.1".parse().expect("ip")]).expect("issue");
        for pem in [&issued.ca_pem, &issued.server_pem] {
            assert!(pem.starts_with("-----BEGIN CERTIFICATE-----"), "{pem}");
        }
        assert!(issued.server_key.contains("PRIVATE KEY"));
        let dir = tempfile::tempdir().expect("tempdir");
        write(dir.path(), &issued, false).expect("write");
        let err = write(dir.path(), &issued, false).expect_err("exists");
        assert!(err.to_string().contains("--force"), "{err}");
        write(dir.path(), &issued, true).expect("force");
        assert!(issue(&[], &[]).is_err(), "a certificate needs a name");
    }
}
