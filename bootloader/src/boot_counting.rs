//! The A/B slot state machine with boot counting, over U-Boot environment variables.
//!
//! This module is pure: every transition takes the current variables and returns the
//! variables to write, or an error; nothing here touches storage. A caller (the U-Boot
//! backend) applies the result in **one** atomic env write, so a power cut leaves either
//! the state before or the state after a transition, never a mix.
//!
//! # Variables
//!
//! Compatible with RAUC's U-Boot integration, so existing boot scripts and tools work:
//!
//! | variable | meaning |
//! |---|---|
//! | `BOOT_ORDER` | slots to try, first first, separated by spaces, e.g. `"B A"`. A slot that is not listed is never booted (a slot being written, or one that failed). |
//! | `BOOT_A_LEFT`, `BOOT_B_LEFT` | boot attempts left for the slot (decimal). The boot script decrements the chosen slot's counter and saves the env *before* starting the kernel; a slot at 0 is skipped. |
//!
//! Basalt adds:
//!
//! | variable | meaning |
//! |---|---|
//! | `BASALT_TRIAL` | the slot activated by an update or rollback and not yet committed (health check passed); unset when the booted system is committed |
//! | `BASALT_LAST_FAILED` | the slot of the last trial that ran out of tries without being committed; kept until the next `activate` |
//!
//! # Transitions
//!
//! | transition | effect |
//! |---|---|
//! | [`prepare_update`] | target removed from `BOOT_ORDER`, its counter set to 0; refused for the booted slot |
//! | [`activate`] | `BOOT_ORDER` = target then the other slot (if it was bootable), target counter = tries, `BASALT_TRIAL` = target |
//! | [`mark_good`] | booted slot first in `BOOT_ORDER`, its counter restored to the default; a trial of the booted slot is committed; a trial of the *other* slot that ran out of tries is recorded in `BASALT_LAST_FAILED` and that slot leaves the order |
//! | [`mark_bad`] | slot removed from `BOOT_ORDER`, counter 0; refused when it would leave no bootable slot |
//! | [`rollback`] | the other slot first with default tries, on trial; refused when the other slot is not in `BOOT_ORDER` |
//! | [`boot_decision`] | what the boot script does at power-on (see below) |
//!
//! # The boot script's algorithm ([`boot_decision`])
//!
//! 1. A missing (or empty) `BOOT_ORDER` is set to `"A B"`, a missing `BOOT_x_LEFT` to the
//!    default (3). A counter that is not a number counts as its leading digits (none: 0),
//!    as U-Boot's `test -gt` reads it.
//! 2. Walk `BOOT_ORDER`; the first slot whose counter is above 0 is chosen: its counter is
//!    decremented, the env saved, and that slot booted.
//! 3. If no slot qualifies, both counters get the default back, the env is saved and the
//!    board resets (so a node whose every slot failed keeps retrying rather than stopping;
//!    a slot outside `BOOT_ORDER` is still never walked, so it is never retried).
//!
//! The boot script templates under `overlays/` implement exactly this; the tests of this
//! module are the tests of that logic.
//!
//! # Limits
//!
//! Only two slots, named `A` and `B`. Counters are single digits (1 to 9 tries, see
//! [`MAX_TRIES`]) because U-Boot's `setexpr` prints hexadecimal while `test` reads decimal.

use std::collections::BTreeMap;

use crate::slot::{BootStatus, Slot, SlotState};

/// The U-Boot variables this module reads and writes.
pub type EnvVars = BTreeMap<String, String>;

/// Name of the boot order variable.
pub const BOOT_ORDER: &str = "BOOT_ORDER";
/// Name of the trial variable.
pub const BASALT_TRIAL: &str = "BASALT_TRIAL";
/// Name of the last failed trial variable.
pub const BASALT_LAST_FAILED: &str = "BASALT_LAST_FAILED";
/// Tries a slot gets when its counter is restored or reset.
pub const DEFAULT_TRIES: u32 = 3;
/// Most tries a slot may be given. U-Boot's `setexpr` computes in hexadecimal while
/// `test -gt` reads decimal; below 10 both agree, so counters stay single digits.
pub const MAX_TRIES: u32 = 9;

/// Name of the tries-left variable of `slot` (`BOOT_A_LEFT`, `BOOT_B_LEFT`).
pub fn left_var(slot: Slot) -> &'static str {
    match slot {
        Slot::A => "BOOT_A_LEFT",
        Slot::B => "BOOT_B_LEFT",
    }
}

/// A transition that is not allowed in the current state. Nothing is written.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TransitionError {
    /// `prepare_update` or `mark_bad` of the slot the system runs from.
    #[error("slot {0} is the booted slot; it cannot be overwritten or marked bad while running")]
    BootedSlot(Slot),
    /// The transition would leave `BOOT_ORDER` without a bootable slot.
    #[error("refusing to leave no bootable slot: {0} is the only slot in BOOT_ORDER")]
    LastBootableSlot(Slot),
    /// `rollback` to a slot that holds no bootable system.
    #[error("cannot roll back to slot {0}: it is not in BOOT_ORDER (being written, or failed)")]
    NotBootable(Slot),
    /// `activate` with a number of tries outside 1..=9.
    #[error("cannot activate slot {0} with {1} tries: the boot script counts 1 to 9 tries")]
    TriesOutOfRange(Slot, u32),
    /// The booted slot is unknown (no `basalt.slot=` on the command line).
    #[error("the booted slot is unknown; this operation needs it")]
    BootedUnknown,
    /// A variable holds a value the state machine cannot interpret.
    #[error("U-Boot variable {name}={value:?} is invalid: {reason}")]
    InvalidVariable {
        /// Variable name.
        name: &'static str,
        /// Its value.
        value: String,
        /// What is wrong with it.
        reason: &'static str,
    },
}

/// What the boot script does at power-on, as computed by [`boot_decision`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BootDecision {
    /// Boot this slot; the variables (with its counter decremented) are saved first.
    Boot {
        /// The slot booted.
        slot: Slot,
        /// The variables saved before the kernel starts.
        vars: EnvVars,
    },
    /// No slot had tries left: the counters of the slots in the order were reset, the env
    /// saved and the board resets.
    ResetCounters {
        /// The variables saved before the reset.
        vars: EnvVars,
    },
}

/// The decoded state: the part of the env this module cares about.
#[derive(Debug, Clone, PartialEq, Eq)]
struct AbState {
    order: Vec<Slot>,
    left: [u32; 2],
    trial: Option<Slot>,
    last_failed: Option<Slot>,
}

fn index(slot: Slot) -> usize {
    match slot {
        Slot::A => 0,
        Slot::B => 1,
    }
}

fn parse_order(value: &str) -> Result<Vec<Slot>, TransitionError> {
    let mut order = Vec::new();
    for word in value.split_whitespace() {
        let slot = match word {
            "A" => Slot::A,
            "B" => Slot::B,
            _ => {
                return Err(TransitionError::InvalidVariable {
                    name: BOOT_ORDER,
                    value: value.to_string(),
                    reason: "only the slot names A and B may appear",
                });
            }
        };
        if !order.contains(&slot) {
            order.push(slot);
        }
    }
    Ok(order)
}

fn parse_slot_var(vars: &EnvVars, name: &'static str) -> Result<Option<Slot>, TransitionError> {
    match vars.get(name).map(String::as_str) {
        None | Some("") => Ok(None),
        Some("A") => Ok(Some(Slot::A)),
        Some("B") => Ok(Some(Slot::B)),
        Some(other) => Err(TransitionError::InvalidVariable {
            name,
            value: other.to_string(),
            reason: "expected A, B or empty",
        }),
    }
}

/// Counter as the boot script reads it after defaulting: a missing (or empty, which U-Boot
/// stores as missing) counter counts as the default; otherwise its leading decimal digits,
/// as U-Boot's `test -gt` reads it with `simple_strtol(value, NULL, 10)` (no digits → 0).
fn script_left(vars: &EnvVars, slot: Slot) -> u32 {
    match vars.get(left_var(slot)) {
        None => DEFAULT_TRIES,
        Some(v) if v.is_empty() => DEFAULT_TRIES,
        Some(v) => {
            let digits: String = v.chars().take_while(char::is_ascii_digit).collect();
            digits
                .parse()
                .unwrap_or(if digits.is_empty() { 0 } else { u32::MAX })
        }
    }
}

impl AbState {
    fn decode(vars: &EnvVars) -> Result<Self, TransitionError> {
        let order = match vars.get(BOOT_ORDER) {
            None => vec![Slot::A, Slot::B],
            Some(value) => parse_order(value)?,
        };
        Ok(AbState {
            order,
            left: [script_left(vars, Slot::A), script_left(vars, Slot::B)],
            trial: parse_slot_var(vars, BASALT_TRIAL)?,
            last_failed: parse_slot_var(vars, BASALT_LAST_FAILED)?,
        })
    }

    /// Writes this state into a copy of `vars`, keeping every unrelated variable.
    fn encode(&self, vars: &EnvVars) -> EnvVars {
        let mut out = vars.clone();
        let order: Vec<&str> = self.order.iter().map(|s| s.letter()).collect();
        out.insert(BOOT_ORDER.to_string(), order.join(" "));
        for slot in Slot::ALL {
            out.insert(
                left_var(slot).to_string(),
                self.left[index(slot)].to_string(),
            );
        }
        match self.trial {
            Some(slot) => out.insert(BASALT_TRIAL.to_string(), slot.letter().to_string()),
            None => out.remove(BASALT_TRIAL),
        };
        match self.last_failed {
            Some(slot) => out.insert(BASALT_LAST_FAILED.to_string(), slot.letter().to_string()),
            None => out.remove(BASALT_LAST_FAILED),
        };
        out
    }

    fn bootable(&self, slot: Slot) -> bool {
        self.order.contains(&slot)
    }

    fn remove(&mut self, slot: Slot) {
        self.order.retain(|s| *s != slot);
        self.left[index(slot)] = 0;
    }

    fn put_first(&mut self, slot: Slot) {
        self.order.retain(|s| *s != slot);
        self.order.insert(0, slot);
    }
}

/// The boot status that `vars` describe, for a system booted from `booted`.
pub fn status(vars: &EnvVars, booted: Option<Slot>) -> Result<BootStatus, TransitionError> {
    let state = AbState::decode(vars)?;
    let slots = Slot::ALL
        .iter()
        .map(|&slot| SlotState {
            slot,
            bootable: state.bootable(slot),
            tries_left: Some(state.left[index(slot)]),
        })
        .collect();
    Ok(BootStatus {
        booted,
        order: state.order.clone(),
        slots,
        committed: booted.is_some_and(|b| state.trial != Some(b)),
        trial: state.trial,
        last_failed: state.last_failed,
    })
}

/// Takes `target` out of the boot order before any byte of it is written.
pub fn prepare_update(
    vars: &EnvVars,
    booted: Option<Slot>,
    target: Slot,
) -> Result<EnvVars, TransitionError> {
    let mut state = AbState::decode(vars)?;
    if booted == Some(target) {
        return Err(TransitionError::BootedSlot(target));
    }
    if state.order == [target] {
        return Err(TransitionError::LastBootableSlot(target));
    }
    state.remove(target);
    if state.trial == Some(target) {
        state.trial = None;
    }
    Ok(state.encode(vars))
}

/// Makes `target` boot next on trial with `tries` attempts; the other slot, if bootable,
/// stays behind it as the fallback.
pub fn activate(vars: &EnvVars, target: Slot, tries: u32) -> Result<EnvVars, TransitionError> {
    if !(1..=MAX_TRIES).contains(&tries) {
        return Err(TransitionError::TriesOutOfRange(target, tries));
    }
    let mut state = AbState::decode(vars)?;
    state.put_first(target);
    state.left[index(target)] = tries;
    state.trial = Some(target);
    state.last_failed = None;
    Ok(state.encode(vars))
}

/// Commits the booted slot after its health check: first in the order, counter restored.
///
/// When the booted slot is not the slot on trial, the trial ran out of tries and the boot
/// script fell back here: the failed slot is recorded in `BASALT_LAST_FAILED` and leaves the
/// order, so it is not retried when the counters are reset.
pub fn mark_good(vars: &EnvVars, booted: Slot) -> Result<EnvVars, TransitionError> {
    let mut state = AbState::decode(vars)?;
    match state.trial {
        Some(trial) if trial == booted => state.trial = None,
        Some(failed) => {
            state.trial = None;
            state.last_failed = Some(failed);
            state.remove(failed);
        }
        None => {}
    }
    state.put_first(booted);
    state.left[index(booted)] = DEFAULT_TRIES;
    Ok(state.encode(vars))
}

/// Makes `slot` unbootable. Refused for the booted slot and for the last bootable slot.
pub fn mark_bad(
    vars: &EnvVars,
    booted: Option<Slot>,
    slot: Slot,
) -> Result<EnvVars, TransitionError> {
    let mut state = AbState::decode(vars)?;
    if booted == Some(slot) {
        return Err(TransitionError::BootedSlot(slot));
    }
    if state.order == [slot] {
        return Err(TransitionError::LastBootableSlot(slot));
    }
    state.remove(slot);
    if state.trial == Some(slot) {
        state.trial = None;
    }
    Ok(state.encode(vars))
}

/// Switches back to the slot the system did not boot from. It boots next on trial with the
/// default tries; the booted slot stays in the order behind it as the fallback.
pub fn rollback(vars: &EnvVars, booted: Option<Slot>) -> Result<(Slot, EnvVars), TransitionError> {
    let booted = booted.ok_or(TransitionError::BootedUnknown)?;
    let target = booted.other();
    let mut state = AbState::decode(vars)?;
    if !state.bootable(target) {
        return Err(TransitionError::NotBootable(target));
    }
    state.put_first(target);
    state.left[index(target)] = DEFAULT_TRIES;
    state.trial = Some(target);
    Ok((target, state.encode(vars)))
}

/// What the boot script does with `vars` at power-on: see the module docs.
///
/// Unlike the other transitions this one never fails: the boot script cannot stop on a
/// bad variable, so an unreadable `BOOT_ORDER` is treated like a missing one.
pub fn boot_decision(vars: &EnvVars) -> BootDecision {
    let mut out = vars.clone();
    // `test -n "${X}" || setenv X default`: U-Boot stores an empty value as unset.
    let mut default_if_unset = |name: &str, value: String| {
        if out.get(name).is_none_or(|v| v.is_empty()) {
            out.insert(name.to_string(), value);
        }
    };
    default_if_unset(BOOT_ORDER, "A B".to_string());
    for slot in Slot::ALL {
        default_if_unset(left_var(slot), DEFAULT_TRIES.to_string());
    }
    let order: Vec<Slot> = out[BOOT_ORDER]
        .split_whitespace()
        .filter_map(|w| match w {
            "A" => Some(Slot::A),
            "B" => Some(Slot::B),
            _ => None,
        })
        .collect();
    for slot in order {
        let left = script_left(&out, slot);
        if left > 0 {
            out.insert(left_var(slot).to_string(), (left - 1).to_string());
            return BootDecision::Boot { slot, vars: out };
        }
    }
    // No slot qualified: both counters back to the default (a slot outside BOOT_ORDER is
    // still never walked), saved, then `reset`.
    for slot in Slot::ALL {
        out.insert(left_var(slot).to_string(), DEFAULT_TRIES.to_string());
    }
    BootDecision::ResetCounters { vars: out }
}

/// The variables of a freshly built image: slot A active and committed, slot B empty.
pub fn initial_vars() -> EnvVars {
    let state = AbState {
        order: vec![Slot::A],
        left: [DEFAULT_TRIES, 0],
        trial: None,
        last_failed: None,
    };
    state.encode(&EnvVars::new())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(pairs: &[(&str, &str)]) -> EnvVars {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn get<'a>(vars: &'a EnvVars, key: &str) -> Option<&'a str> {
        vars.get(key).map(String::as_str)
    }

    /// Boots until a slot is chosen (at most a few resets), like a board power-cycling.
    fn power_on(vars: &EnvVars) -> (Slot, EnvVars) {
        let mut current = vars.clone();
        for _ in 0..3 {
            match boot_decision(&current) {
                BootDecision::Boot { slot, vars } => return (slot, vars),
                BootDecision::ResetCounters { vars } => current = vars,
            }
        }
        panic!("no slot chosen after 3 resets: {current:?}");
    }

    #[test]
    fn initial_image_boots_a_committed() {
        let v = initial_vars();
        assert_eq!(get(&v, BOOT_ORDER), Some("A"));
        let (slot, after) = power_on(&v);
        assert_eq!(slot, Slot::A);
        assert_eq!(get(&after, "BOOT_A_LEFT"), Some("2"));
        let st = status(&after, Some(Slot::A)).unwrap();
        assert!(st.committed);
        assert_eq!(st.next_boot(), Some(Slot::A));
        let good = mark_good(&after, Slot::A).unwrap();
        assert_eq!(get(&good, "BOOT_A_LEFT"), Some("3"));
    }

    #[test]
    fn boot_decision_walks_order_and_decrements() {
        let v = vars(&[
            ("BOOT_ORDER", "B A"),
            ("BOOT_A_LEFT", "3"),
            ("BOOT_B_LEFT", "1"),
        ]);
        let BootDecision::Boot { slot, vars: after } = boot_decision(&v) else {
            panic!("expected a boot")
        };
        assert_eq!(slot, Slot::B);
        assert_eq!(get(&after, "BOOT_B_LEFT"), Some("0"));
        let BootDecision::Boot { slot, vars: after } = boot_decision(&after) else {
            panic!("expected a boot")
        };
        assert_eq!(slot, Slot::A, "B has no tries left, A is next");
        assert_eq!(get(&after, "BOOT_A_LEFT"), Some("2"));
    }

    #[test]
    fn boot_decision_defaults_missing_variables() {
        let BootDecision::Boot { slot, vars: after } = boot_decision(&EnvVars::new()) else {
            panic!("expected a boot")
        };
        assert_eq!(slot, Slot::A);
        assert_eq!(get(&after, BOOT_ORDER), Some("A B"));
        assert_eq!(get(&after, "BOOT_A_LEFT"), Some("2"));
        assert_eq!(
            get(&after, "BOOT_B_LEFT"),
            Some("3"),
            "defaulted, like the script"
        );
    }

    #[test]
    fn boot_decision_reads_counters_like_u_boot_test() {
        // U-Boot's `test -gt` reads leading decimal digits; garbage is 0.
        let v = vars(&[
            ("BOOT_ORDER", "A B"),
            ("BOOT_A_LEFT", "x"),
            ("BOOT_B_LEFT", "2z"),
        ]);
        let BootDecision::Boot { slot, .. } = boot_decision(&v) else {
            panic!("expected a boot")
        };
        assert_eq!(slot, Slot::B);
    }

    #[test]
    fn boot_decision_reset_never_brings_back_a_slot_outside_the_order() {
        let v = vars(&[
            ("BOOT_ORDER", "A"),
            ("BOOT_A_LEFT", "0"),
            ("BOOT_B_LEFT", "0"),
        ]);
        let BootDecision::ResetCounters { vars: after } = boot_decision(&v) else {
            panic!("expected a reset")
        };
        assert_eq!(get(&after, "BOOT_A_LEFT"), Some("3"));
        assert_eq!(get(&after, "BOOT_B_LEFT"), Some("3"));
        for _ in 0..5 {
            let (slot, _) = power_on(&after);
            assert_eq!(slot, Slot::A, "B is not in the order");
        }
    }

    #[test]
    fn prepare_update_removes_target_and_refuses_booted() {
        let v = vars(&[
            ("BOOT_ORDER", "A B"),
            ("BOOT_A_LEFT", "3"),
            ("BOOT_B_LEFT", "3"),
        ]);
        let p = prepare_update(&v, Some(Slot::A), Slot::B).unwrap();
        assert_eq!(get(&p, BOOT_ORDER), Some("A"));
        assert_eq!(get(&p, "BOOT_B_LEFT"), Some("0"));
        assert_eq!(
            prepare_update(&v, Some(Slot::A), Slot::A),
            Err(TransitionError::BootedSlot(Slot::A))
        );
        let only_b = vars(&[("BOOT_ORDER", "B")]);
        assert_eq!(
            prepare_update(&only_b, None, Slot::B),
            Err(TransitionError::LastBootableSlot(Slot::B))
        );
    }

    #[test]
    fn activate_puts_target_first_on_trial() {
        let v = initial_vars();
        let p = prepare_update(&v, Some(Slot::A), Slot::B).unwrap();
        let a = activate(&p, Slot::B, 3).unwrap();
        assert_eq!(get(&a, BOOT_ORDER), Some("B A"));
        assert_eq!(get(&a, "BOOT_B_LEFT"), Some("3"));
        assert_eq!(get(&a, BASALT_TRIAL), Some("B"));
        let st = status(&a, Some(Slot::A)).unwrap();
        assert_eq!(st.next_boot(), Some(Slot::B));
        assert_eq!(st.trial, Some(Slot::B));
        assert_eq!(
            activate(&p, Slot::B, 0),
            Err(TransitionError::TriesOutOfRange(Slot::B, 0))
        );
        assert_eq!(
            activate(&p, Slot::B, 10),
            Err(TransitionError::TriesOutOfRange(Slot::B, 10))
        );
    }

    #[test]
    fn successful_update_commits_new_slot() {
        let v = initial_vars();
        let p = prepare_update(&v, Some(Slot::A), Slot::B).unwrap();
        let a = activate(&p, Slot::B, 3).unwrap();
        let (slot, booted) = power_on(&a);
        assert_eq!(slot, Slot::B);
        let st = status(&booted, Some(Slot::B)).unwrap();
        assert!(!st.committed, "on trial until the health check");
        let good = mark_good(&booted, Slot::B).unwrap();
        let st = status(&good, Some(Slot::B)).unwrap();
        assert!(st.committed);
        assert_eq!(st.order, vec![Slot::B, Slot::A], "A stays as the fallback");
        assert_eq!(get(&good, "BOOT_B_LEFT"), Some("3"));
        assert_eq!(get(&good, BASALT_TRIAL), None);
    }

    #[test]
    fn failed_trial_falls_back_and_is_recorded() {
        let v = initial_vars();
        let a = activate(
            &prepare_update(&v, Some(Slot::A), Slot::B).unwrap(),
            Slot::B,
            2,
        )
        .unwrap();
        // Two attempts of B that never reach the health check.
        let (s1, v1) = power_on(&a);
        let (s2, v2) = power_on(&v1);
        assert_eq!((s1, s2), (Slot::B, Slot::B));
        let (s3, v3) = power_on(&v2);
        assert_eq!(s3, Slot::A, "tries ran out: back on A without human action");
        let st = status(&v3, Some(Slot::A)).unwrap();
        assert!(st.committed, "A was never on trial");
        assert_eq!(st.trial, Some(Slot::B));
        let good = mark_good(&v3, Slot::A).unwrap();
        let st = status(&good, Some(Slot::A)).unwrap();
        assert_eq!(st.last_failed, Some(Slot::B));
        assert_eq!(st.order, vec![Slot::A]);
        // A failing A later never brings the failed B back.
        let mut cur = good;
        for _ in 0..10 {
            let (slot, next) = power_on(&cur);
            assert_eq!(slot, Slot::A);
            cur = next;
        }
    }

    #[test]
    fn mark_bad_refuses_booted_and_last_slot() {
        let v = vars(&[("BOOT_ORDER", "A B")]);
        let b = mark_bad(&v, Some(Slot::A), Slot::B).unwrap();
        assert_eq!(get(&b, BOOT_ORDER), Some("A"));
        assert_eq!(
            mark_bad(&v, Some(Slot::A), Slot::A),
            Err(TransitionError::BootedSlot(Slot::A))
        );
        assert_eq!(
            mark_bad(&b, None, Slot::A),
            Err(TransitionError::LastBootableSlot(Slot::A))
        );
    }

    #[test]
    fn rollback_switches_to_other_slot_on_trial() {
        let v = vars(&[
            ("BOOT_ORDER", "B A"),
            ("BOOT_A_LEFT", "3"),
            ("BOOT_B_LEFT", "3"),
        ]);
        let (target, r) = rollback(&v, Some(Slot::B)).unwrap();
        assert_eq!(target, Slot::A);
        assert_eq!(get(&r, BOOT_ORDER), Some("A B"));
        assert_eq!(get(&r, BASALT_TRIAL), Some("A"));
        let (slot, booted) = power_on(&r);
        assert_eq!(slot, Slot::A);
        let good = mark_good(&booted, Slot::A).unwrap();
        assert_eq!(
            get(&good, BOOT_ORDER),
            Some("A B"),
            "B stays as the fallback"
        );
        assert_eq!(rollback(&v, None), Err(TransitionError::BootedUnknown));
        let only_b = vars(&[("BOOT_ORDER", "B")]);
        assert_eq!(
            rollback(&only_b, Some(Slot::B)),
            Err(TransitionError::NotBootable(Slot::A))
        );
    }

    #[test]
    fn invalid_variables_are_reported_by_name() {
        let v = vars(&[("BOOT_ORDER", "A C")]);
        let err = activate(&v, Slot::B, 3).unwrap_err();
        assert!(err.to_string().contains("BOOT_ORDER"), "{err}");
        let v = vars(&[("BASALT_TRIAL", "Z")]);
        assert!(
            status(&v, None)
                .unwrap_err()
                .to_string()
                .contains("BASALT_TRIAL")
        );
    }

    #[test]
    fn unrelated_variables_are_kept() {
        let v = vars(&[("bootdelay", "0"), ("BOOT_ORDER", "A")]);
        let a = activate(&v, Slot::B, 3).unwrap();
        assert_eq!(get(&a, "bootdelay"), Some("0"));
    }

    /// The update sequence as the env sees it, with the slot's content state between
    /// writes. A power cut can happen after any prefix of these steps; in redundant mode a
    /// torn env write leaves the previous copy, i.e. the same state as the prefix before it.
    #[test]
    fn power_loss_after_every_prefix_reaches_a_good_slot() {
        #[derive(Clone, Copy, PartialEq, Debug)]
        enum SlotB {
            Empty,
            HalfWritten,
            Complete,
        }
        // Starting state: A booted before and committed.
        let (_, start) = power_on(&initial_vars());
        let start = mark_good(&start, Slot::A).unwrap();

        // Each step: (env after the step, content of slot B after the step).
        let mut steps: Vec<(EnvVars, SlotB)> = vec![(start.clone(), SlotB::Empty)];
        let prepared = prepare_update(&start, Some(Slot::A), Slot::B).unwrap();
        steps.push((prepared.clone(), SlotB::Empty));
        steps.push((prepared.clone(), SlotB::HalfWritten));
        steps.push((prepared.clone(), SlotB::Complete));
        let activated = activate(&prepared, Slot::B, 3).unwrap();
        steps.push((activated.clone(), SlotB::Complete));
        let (slot, booted) = power_on(&activated);
        assert_eq!(slot, Slot::B);
        steps.push((booted.clone(), SlotB::Complete));
        let committed = mark_good(&booted, Slot::B).unwrap();
        steps.push((committed, SlotB::Complete));

        // Before activation slot B is never chosen; after, only complete.
        for (i, (env, content)) in steps.iter().enumerate() {
            let order = status(env, None).unwrap().order;
            assert!(!order.is_empty(), "step {i}: empty boot order");
            // Power-cycle repeatedly, with B failing every time it is tried (the worst case),
            // and check every slot that is chosen is safe.
            let mut cur = env.clone();
            let mut seen_a = false;
            for attempt in 0..8 {
                let (slot, next) = power_on(&cur);
                match slot {
                    Slot::A => seen_a = true,
                    Slot::B => assert_eq!(
                        *content,
                        SlotB::Complete,
                        "step {i} attempt {attempt}: chose slot B while it is {content:?}"
                    ),
                }
                cur = next;
            }
            assert!(seen_a, "step {i}: a failing B must fall back to A");
        }
    }
}
