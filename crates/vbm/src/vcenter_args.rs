//! Connection flags shared by every command that talks to vCenter (`vms list`, `backup`,
//! `restore`): `--vcenter URL --user USER [--thumbprint SHA256|--insecure] [--ca-file PEM]`.
//! The password comes from `VCENTER_PASSWORD` or, on a terminal, a prompt — never a flag, so it
//! does not end up in shell history or `ps`.

use std::io::IsTerminal;
use std::path::PathBuf;

use anyhow::{Context, bail};
use vbm_vsphere::{Client, ClientConfig, ConnectOptions, Secret, Thumbprint, Trust};

/// The environment variable holding the vCenter password.
pub(crate) const PASSWORD_ENV: &str = "VCENTER_PASSWORD";

/// How to reach and trust a vCenter or ESXi.
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct VcenterArgs {
    /// vCenter or ESXi: `https://host[:port][/sdk]` or just the host name.
    #[arg(long, value_name = "URL")]
    pub(crate) vcenter: String,

    /// User name, e.g. `backup@vsphere.local`. The password is read from VCENTER_PASSWORD or
    /// prompted for on a terminal.
    #[arg(long, value_name = "USER")]
    pub(crate) user: String,

    /// Trust exactly the certificate with this SHA-256 or SHA-1 thumbprint (`AA:BB:…` or hex),
    /// as shown by vCenter.
    #[arg(long, value_name = "THUMBPRINT", conflicts_with_all = ["insecure", "ca_file"])]
    pub(crate) thumbprint: Option<String>,

    /// Accept any certificate (labs only; logs a warning).
    #[arg(long, conflicts_with = "ca_file")]
    pub(crate) insecure: bool,

    /// Trust the CA certificates in this PEM file (e.g. vCenter's VMCA root) instead of the
    /// system's.
    #[arg(long, value_name = "PEM")]
    pub(crate) ca_file: Option<PathBuf>,
}

impl VcenterArgs {
    /// The TLS trust mode the flags select.
    ///
    /// # Errors
    /// When the thumbprint is not 20 or 32 hex bytes.
    pub(crate) fn trust(&self) -> anyhow::Result<Trust> {
        Ok(match (&self.thumbprint, self.insecure, &self.ca_file) {
            (Some(t), _, _) => Trust::Pinned(Thumbprint::parse(t)?),
            (None, true, _) => Trust::Insecure,
            (None, false, Some(file)) => Trust::CaFile(file.clone()),
            (None, false, None) => Trust::SystemRoots,
        })
    }

    /// The password from `VCENTER_PASSWORD`, else a prompt on the terminal.
    ///
    /// # Errors
    /// When neither is available or the prompt fails.
    pub(crate) fn password(&self) -> anyhow::Result<Secret> {
        if let Ok(password) = std::env::var(PASSWORD_ENV) {
            return Ok(Secret::new(password));
        }
        if !std::io::stdin().is_terminal() {
            bail!(
                "no vCenter password: set {PASSWORD_ENV} (standard input is not a terminal to prompt on)"
            );
        }
        let password =
            rpassword::prompt_password(format!("Password for {} at {}: ", self.user, self.vcenter))
                .context("reading the vCenter password from the terminal")?;
        Ok(Secret::new(password))
    }

    /// Connection options with the default client configuration.
    ///
    /// # Errors
    /// As [`VcenterArgs::trust`] and [`VcenterArgs::password`].
    pub(crate) fn connect_options(&self) -> anyhow::Result<ConnectOptions> {
        Ok(
            ConnectOptions::new(self.vcenter.clone(), self.user.clone(), self.password()?)
                .trust(self.trust()?)
                .config(ClientConfig::default()),
        )
    }

    /// Connects and logs in. The error says precisely what failed (connection refused,
    /// "certificate thumbprint mismatch (expected A, got B)", rejected user name or password).
    ///
    /// # Errors
    /// As above.
    pub(crate) async fn connect(&self) -> anyhow::Result<Client> {
        let options = self.connect_options()?;
        match Client::connect(options).await {
            Ok(client) => Ok(client),
            Err(err @ vbm_vsphere::Error::Tls { .. }) => Err(anyhow::anyhow!(
                "{err}; trust it with --ca-file (vCenter's root CA) or pin it with --thumbprint"
            )),
            Err(err) => Err(err.into()),
        }
    }
}

/// The vCenter flags of commands where vCenter is optional (`restore --to-dir` needs none,
/// `verify` uses it only to compare disk sizes). clap cannot make a flattened group with
/// required flags optional, so these are all optional and [`OptionalVcenterArgs::get`] checks
/// that URL and user come together.
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct OptionalVcenterArgs {
    /// vCenter or ESXi: `https://host[:port][/sdk]`.
    #[arg(long, value_name = "URL", requires = "user")]
    pub(crate) vcenter: Option<String>,

    /// vCenter user; the password comes from VCENTER_PASSWORD or a prompt.
    #[arg(long, value_name = "USER", requires = "vcenter")]
    pub(crate) user: Option<String>,

    /// Trust exactly the vCenter certificate with this SHA-256 or SHA-1 thumbprint.
    #[arg(long, value_name = "THUMBPRINT", conflicts_with_all = ["insecure", "ca_file"])]
    pub(crate) thumbprint: Option<String>,

    /// Accept any vCenter certificate (labs only).
    #[arg(long, conflicts_with = "ca_file")]
    pub(crate) insecure: bool,

    /// Trust the CA certificates in this PEM file.
    #[arg(long, value_name = "PEM")]
    pub(crate) ca_file: Option<PathBuf>,
}

impl OptionalVcenterArgs {
    /// The full connection flags, when `--vcenter` was given.
    pub(crate) fn get(&self) -> Option<VcenterArgs> {
        let (Some(vcenter), Some(user)) = (&self.vcenter, &self.user) else {
            return None;
        };
        Some(VcenterArgs {
            vcenter: vcenter.clone(),
            user: user.clone(),
            thumbprint: self.thumbprint.clone(),
            insecure: self.insecure,
            ca_file: self.ca_file.clone(),
        })
    }
}
