//! The failure schedule of `cairn chaos`: from a profile (`chaos_profiles.yaml`: calm, flaky,
//! hostile) and a seed, which of the workload's jobs and stages fail how — worker kills right
//! after a stage sent its effect, transient failures, timeouts, a model outage that forces a
//! fallback, a database restart. Pure and seeded (see [`crate::chaos`]): the same profile, seed
//! and job count give the same schedule on every machine, so the naive runner and Cairn face
//! exactly the same failures.

use crate::chaos::{hash64, unit_hash};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// The five stages of every job, in order; the last two write to the outside.
pub const STAGES: [&str; 5] = ["setup", "load_data", "evaluate", "write_metrics", "upload_artifact"];

/// Stages whose effect leaves the process (a kill right after one is the nastiest instant): the
/// model call (paid for) and the two writes.
const EFFECT_STAGES: [usize; 3] = [2, 3, 4];

/// How much goes wrong, per 20 jobs.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Profile {
    #[serde(default)]
    pub name: String,
    /// Worker processes killed per 20 jobs.
    pub kills: u32,
    /// Chance a stage's first attempts fail with a transient error.
    pub transient_rate: f64,
    /// Chance a stage's first attempt hangs past its timeout.
    pub timeout_rate: f64,
    /// The primary model is away for a quarter of the jobs.
    pub model_outage: bool,
    /// The database restarts once, mid-workload (PostgreSQL only).
    pub db_restart: bool,
}

/// The profiles shipped with Cairn, by name.
pub fn profiles() -> Result<BTreeMap<String, Profile>, String> {
    let text = include_str!("chaos_profiles.yaml");
    let mut all: BTreeMap<String, Profile> =
        serde_saphyr::from_str(text).map_err(|e| format!("chaos_profiles.yaml does not parse: {e}"))?;
    for (name, profile) in all.iter_mut() {
        profile.name = name.clone();
        let rates = [profile.transient_rate, profile.timeout_rate];
        if rates.iter().any(|r| !(0.0..=1.0).contains(r)) || profile.transient_rate + profile.timeout_rate > 1.0 {
            return Err(format!("chaos profile `{name}`: the rates must be fractions that add up to at most 1"));
        }
    }
    Ok(all)
}

/// The profile `name`, or why not (naming the ones there are).
pub fn profile(name: &str) -> Result<Profile, String> {
    let mut all = profiles()?;
    let names: Vec<String> = all.keys().cloned().collect();
    all.remove(name).ok_or_else(|| format!("no chaos profile `{name}`; the profiles are {}", names.join(", ")))
}

/// What happens to one stage of one job.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case", tag = "fault")]
pub enum Fault {
    /// Its first `times` attempts fail with a transient error.
    Transient { times: u32 },
    /// Its first attempt hangs past the stage's timeout.
    Timeout,
}

/// Where the process running a job dies: right after `stage` sent its effect, before its result
/// was recorded.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct Kill {
    pub job: usize,
    pub stage: usize,
}

/// The whole workload's failures.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Schedule {
    pub profile: String,
    pub seed: u64,
    pub jobs: usize,
    /// Faults by (job, stage).
    #[serde(serialize_with = "faults_as_list")]
    pub faults: BTreeMap<(usize, usize), Fault>,
    /// Kills, in job and stage order.
    pub kills: Vec<Kill>,
    /// The jobs whose evaluation finds the primary model away (start, end exclusive).
    pub outage: Option<(usize, usize)>,
    /// The database restarts when this job starts.
    pub db_restart_at_job: Option<usize>,
}

fn faults_as_list<S: serde::Serializer>(faults: &BTreeMap<(usize, usize), Fault>, s: S) -> Result<S::Ok, S::Error> {
    use serde::ser::SerializeSeq;
    let mut seq = s.serialize_seq(Some(faults.len()))?;
    for ((job, stage), fault) in faults {
        seq.serialize_element(&serde_json::json!({"job": job, "stage": STAGES[*stage], "what": fault}))?;
    }
    seq.end()
}

impl Schedule {
    /// The schedule `profile` and `seed` give `jobs` jobs.
    pub fn new(profile: &Profile, seed: u64, jobs: usize) -> Schedule {
        let key = |what: &str, job: usize, stage: usize| [what.to_string(), job.to_string(), stage.to_string()];
        // Kills: the effect stages of every job ranked by the seed's hash, the first ones taken.
        let wanted = ((profile.kills as usize * jobs) as f64 / 20.0).round() as usize;
        let mut candidates: Vec<(u64, Kill)> = (0..jobs)
            .flat_map(|job| EFFECT_STAGES.iter().map(move |&stage| Kill { job, stage }))
            .map(|k| {
                let parts = key("kill", k.job, k.stage);
                (hash64(seed, &parts.each_ref().map(String::as_str)), k)
            })
            .collect();
        candidates.sort();
        // At most one kill per job: a job killed twice says nothing more.
        let mut kills: Vec<Kill> = Vec::new();
        for (_, k) in candidates {
            if kills.len() == wanted {
                break;
            }
            if !kills.iter().any(|other| other.job == k.job) {
                kills.push(k);
            }
        }
        kills.sort();
        let mut faults = BTreeMap::new();
        for job in 0..jobs {
            for stage in 0..STAGES.len() {
                if kills.contains(&Kill { job, stage }) {
                    continue;
                }
                let parts = key("fault", job, stage);
                let parts = parts.each_ref().map(String::as_str);
                let u = unit_hash(seed, &parts);
                if u < profile.transient_rate {
                    faults.insert((job, stage), Fault::Transient { times: 1 + (hash64(seed, &parts) % 2) as u32 });
                } else if u < profile.transient_rate + profile.timeout_rate {
                    faults.insert((job, stage), Fault::Timeout);
                }
            }
        }
        let outage = (profile.model_outage && jobs > 0).then(|| {
            let len = jobs.div_ceil(4);
            let start = (hash64(seed, &["outage"]) % jobs as u64) as usize;
            (start.min(jobs - len), start.min(jobs - len) + len)
        });
        let db_restart_at_job =
            (profile.db_restart && jobs > 1).then(|| 1 + (hash64(seed, &["db_restart"]) % (jobs as u64 - 1)) as usize);
        Schedule { profile: profile.name.clone(), seed, jobs, faults, kills, outage, db_restart_at_job }
    }

    /// The fault of a stage, if it has one.
    pub fn fault(&self, job: usize, stage: usize) -> Option<Fault> {
        self.faults.get(&(job, stage)).copied()
    }

    /// Whether the process running `job` dies right after `stage` sent its effect.
    pub fn kill_after(&self, job: usize, stage: usize) -> bool {
        self.kills.contains(&Kill { job, stage })
    }

    /// Whether `job`'s evaluation finds the primary model away.
    pub fn model_away(&self, job: usize) -> bool {
        self.outage.is_some_and(|(start, end)| (start..end).contains(&job))
    }

    /// The schedule in a few lines, for the report.
    pub fn describe(&self) -> Vec<String> {
        let transient = self.faults.values().filter(|f| matches!(f, Fault::Transient { .. })).count();
        let timeouts = self.faults.values().filter(|f| matches!(f, Fault::Timeout)).count();
        let mut lines = vec![format!(
            "profile {}, seed {}, {} jobs: {} kills, {} stages failing transiently, {} timeouts",
            self.profile,
            self.seed,
            self.jobs,
            self.kills.len(),
            transient,
            timeouts
        )];
        if let Some((start, end)) = self.outage {
            lines.push(format!("primary model away for jobs {start}..{end} (fallback)"));
        }
        if let Some(job) = self.db_restart_at_job {
            lines.push(format!("database restarts when job {job} starts"));
        }
        lines
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shipped_profiles_parse_and_get_worse_in_order() {
        let all = profiles().expect("profiles");
        assert_eq!(all.keys().collect::<Vec<_>>(), ["calm", "flaky", "hostile"]);
        let (calm, flaky, hostile) = (&all["calm"], &all["flaky"], &all["hostile"]);
        assert!(calm.kills < flaky.kills && flaky.kills < hostile.kills);
        assert!(calm.transient_rate < flaky.transient_rate && flaky.transient_rate < hostile.transient_rate);
        let err = profile("hostle").expect_err("unknown");
        assert!(err.contains("calm, flaky, hostile"), "{err}");
    }

    #[test]
    fn one_seed_gives_one_schedule_and_another_seed_another() {
        let hostile = profile("hostile").expect("hostile");
        let a = Schedule::new(&hostile, 1337, 20);
        assert_eq!(a, Schedule::new(&hostile, 1337, 20), "the same seed, the same schedule");
        assert_ne!(a, Schedule::new(&hostile, 1338, 20));
        assert_eq!(a.kills.len(), 6, "6 kills per 20 jobs");
        let jobs: std::collections::BTreeSet<usize> = a.kills.iter().map(|k| k.job).collect();
        assert_eq!(jobs.len(), 6, "one kill per job at most");
        assert!(a.kills.iter().all(|k| EFFECT_STAGES.contains(&k.stage)), "kills come right after effects");
        assert!(a.kills.iter().all(|k| a.fault(k.job, k.stage).is_none()), "a killed stage has no other fault");
        // 100 stages at 30 % transient and 10 % timeout: about 40 faults.
        assert!((20..60).contains(&a.faults.len()), "{}", a.faults.len());
        let (start, end) = a.outage.expect("an outage");
        assert_eq!(end - start, 5);
        assert!(end <= 20 && a.model_away(start) && !a.model_away(end));
        assert!(a.db_restart_at_job.is_some_and(|j| (1..20).contains(&j)));
        let text = a.describe().join("\n");
        assert!(text.starts_with("profile hostile, seed 1337, 20 jobs: 6 kills"), "{text}");
    }

    #[test]
    fn calm_is_calm_and_small_workloads_stay_in_range() {
        let calm = Schedule::new(&profile("calm").expect("calm"), 7, 20);
        assert!(calm.kills.is_empty() && calm.faults.is_empty() && calm.outage.is_none());
        let hostile = profile("hostile").expect("hostile");
        for jobs in [0, 1, 2, 3] {
            let s = Schedule::new(&hostile, 9, jobs);
            assert!(s.kills.iter().all(|k| k.job < jobs) && s.faults.keys().all(|(j, _)| *j < jobs));
            assert!(s.outage.is_none_or(|(a, b)| a < b && b <= jobs), "{:?}", s.outage);
        }
        let json = serde_json::to_value(Schedule::new(&hostile, 1337, 4)).expect("json");
        assert!(json["faults"].as_array().is_some_and(|f| f.iter().all(|f| f["stage"].is_string())), "{json}");
    }
}
