//! Definitions prepared once per process. A run's creation records its definition as a payload
//! (serialised and hashed) and its state reads the definition back from it; a process starting
//! many runs of one workflow does that work once instead of once per run.

use cairn_core::definition::{Definition, PreparedDefinition};
use std::sync::{Arc, Mutex};

/// How many distinct definitions are kept, the most recently started first.
const KEPT: usize = 16;

#[derive(Default)]
pub(crate) struct Prepared {
    recent: Mutex<Vec<(Definition, Arc<PreparedDefinition>)>>,
}

impl Prepared {
    /// The definition prepared: the one kept for an equal definition, else prepared now (and kept).
    pub(crate) fn get(&self, definition: &Definition) -> Result<Arc<PreparedDefinition>, String> {
        if let Ok(mut recent) = self.recent.lock()
            && let Some(i) = recent.iter().position(|(kept, _)| kept == definition)
        {
            let prepared = recent[i].1.clone();
            if i > 0 {
                let hit = recent.remove(i);
                recent.insert(0, hit);
            }
            return Ok(prepared);
        }
        let prepared = Arc::new(PreparedDefinition::of(definition)?);
        if let Ok(mut recent) = self.recent.lock() {
            recent.insert(0, (definition.clone(), prepared.clone()));
            recent.truncate(KEPT);
        }
        Ok(prepared)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn named(name: &str) -> Definition {
        let yaml = format!("name: {name}\nsteps:\n  - {{id: a, kind: noop}}\n");
        cairn_core::validate::parse_definition(&yaml, "t.yaml", &crate::kinds::builtin().specs())
            .expect("valid definition")
    }

    #[test]
    fn equal_definitions_are_prepared_once_and_the_oldest_is_forgotten() {
        let prepared = Prepared::default();
        let first = prepared.get(&named("w0")).expect("prepared");
        assert!(Arc::ptr_eq(&first, &prepared.get(&named("w0")).expect("again")), "an equal definition is reused");
        assert!(!Arc::ptr_eq(&first, &prepared.get(&named("w1")).expect("other")));
        for i in 2..=KEPT {
            prepared.get(&named(&format!("w{i}"))).expect("prepared");
        }
        // w0 was used before w1 and every later one: with KEPT + 1 seen, it is the one let go.
        assert!(!Arc::ptr_eq(&first, &prepared.get(&named("w0")).expect("again")), "forgotten, prepared anew");
        assert_eq!(first.payload, prepared.get(&named("w0")).expect("again").payload);
    }
}
