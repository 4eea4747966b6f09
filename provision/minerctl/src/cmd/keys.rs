//! `minerctl keys`: look at a hotkey and sign management requests by hand.
//!
//! `headers` exists so an operator can call the miner API with curl:
//! `curl -H "$(minerctl keys headers --hotkey hk --purpose management | sed -n 1p)" ...`
//! or, more simply, `minerctl keys headers ... | sed 's/^/-H\n/' | xargs -d '\n' curl URL`.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, bail};
use chutes_protocol::{Hotkey, Payload, PublicKey};
use clap::{Args, Subcommand};

#[derive(Subcommand)]
pub enum KeysCommand {
    /// Print the SS58 address and public key of a hotkey file (never the seed).
    Inspect {
        /// Bittensor hotkey file (JSON with secretSeed) or a file holding the hex seed.
        hotkey: PathBuf,
    },
    /// Print the X-Chutes-* headers of a signed management request, one `Name: value` per line.
    Headers(HeadersArgs),
}

#[derive(Args)]
pub struct HeadersArgs {
    /// The signer's hotkey file.
    #[arg(long)]
    hotkey: PathBuf,
    /// Sign the sha256 of this request body (for POST, PUT and PATCH); `-` reads standard input.
    #[arg(long, conflicts_with = "purpose", required_unless_present = "purpose")]
    body: Option<PathBuf>,
    /// Sign this purpose string instead of a body (GET and DELETE use `management`).
    #[arg(long)]
    purpose: Option<String>,
    /// The address expected to sign; it goes into X-Chutes-Validator and must be the
    /// hotkey's own (a guard against signing with the wrong file). Default: the hotkey's.
    #[arg(long)]
    validator: Option<String>,
    /// The miner the request is for (X-Chutes-Miner). Default: the hotkey's own
    /// address, as the operator of a miner signs for it.
    #[arg(long)]
    miner: Option<String>,
}

pub fn run(command: KeysCommand) -> anyhow::Result<ExitCode> {
    match command {
        KeysCommand::Inspect { hotkey } => {
            let key = Hotkey::load(&hotkey)?;
            outln!("ss58_address: {}", key.ss58());
            outln!("public_key: 0x{}", hex::encode(key.public().to_bytes()));
            Ok(ExitCode::SUCCESS)
        }
        KeysCommand::Headers(args) => headers(args),
    }
}

fn headers(args: HeadersArgs) -> anyhow::Result<ExitCode> {
    let key = Hotkey::load(&args.hotkey)?;
    if let Some(validator) = &args.validator {
        PublicKey::from_ss58(validator).context("--validator")?;
        if validator != key.ss58() {
            bail!(
                "--validator {validator} is not the address of {} ({}); the validator header names the signer",
                args.hotkey.display(),
                key.ss58()
            );
        }
    }
    let miner = args.miner.clone().unwrap_or_else(|| key.ss58().to_owned());
    PublicKey::from_ss58(&miner).context("--miner")?;

    let body = match &args.body {
        Some(path) if path.as_os_str() == "-" => {
            let mut buf = Vec::new();
            std::io::Read::read_to_end(&mut std::io::stdin(), &mut buf)
                .context("read the body from stdin")?;
            Some(buf)
        }
        Some(path) => {
            Some(std::fs::read(path).with_context(|| format!("read body file {}", path.display()))?)
        }
        None => None,
    };
    let payload = match (&body, &args.purpose) {
        (Some(body), _) => Payload::Body(body),
        (None, Some(purpose)) => Payload::Purpose(purpose),
        (None, None) => bail!("give --body FILE or --purpose PURPOSE"),
    };
    for (name, value) in key.sign_management(&miner, payload).iter() {
        outln!("{name}: {value}");
    }
    Ok(ExitCode::SUCCESS)
}
