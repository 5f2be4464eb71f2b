//! `basaltctl upgrade`'s arguments and how they become an [`Op::Upgrade`]; the transfer
//! itself is `basaltctl::upgrade`.

use crate::render::Op;
use std::path::PathBuf;

#[derive(Debug, clap::Args)]
#[command(group(clap::ArgGroup::new("source").required(true).args(["bundle", "url"])))]
pub struct UpgradeArgs {
    /// The bundle file to send.
    #[arg(long)]
    pub bundle: Option<PathBuf>,
    /// An http(s) URL the node fetches the bundle from (with Range resume).
    #[arg(long)]
    url: Option<String>,
    /// Do not reboot: the new slot boots at the next reboot.
    #[arg(long)]
    stage: bool,
    /// Install a bundle not newer than the booted version.
    #[arg(long)]
    allow_downgrade: bool,
    /// Boot tries of the new slot (1-9); default: the node's UpdateConfig (3).
    #[arg(long)]
    tries: Option<u32>,
    /// Attempts to push the bundle when the stream drops (each resumes where the node is).
    #[arg(long, default_value_t = 5)]
    attempts: u32,
    /// Send the whole bundle, also the chunks the node's booted slot already holds (by
    /// default only the ranges the node's UpgradePlan lists are sent).
    #[arg(long, conflicts_with = "url")]
    send_all: bool,
}

impl UpgradeArgs {
    /// The operation run against each node.
    pub fn op(&self) -> Op {
        Op::Upgrade {
            bundle: self.bundle.clone(),
            url: self.url.clone(),
            options: basalt_proto::machine::v1::UpgradeOptions {
                allow_downgrade: self.allow_downgrade,
                stage: self.stage,
                tries: self.tries.unwrap_or(0),
                reuse_booted_slot: !self.send_all,
            },
            attempts: self.attempts.max(1),
        }
    }
}
