use std::collections::{BTreeMap, HashMap};
use std::fmt;

use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::error::UpcastError;

/// One step of an upcast chain: lifts a payload from version `n` to `n + 1`.
pub type Upcaster = Box<dyn Fn(Value) -> Result<Value, String> + Send + Sync>;

/// Collects declarations and steps; [`UpcasterRegistryBuilder::build`] validates them.
#[derive(Default)]
pub struct UpcasterRegistryBuilder {
    current: Vec<(String, u32)>,
    steps: Vec<(String, u32, Upcaster)>,
    renames: Vec<(String, String)>,
}

impl fmt::Debug for UpcasterRegistryBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UpcasterRegistryBuilder")
            .field("current", &self.current)
            .field(
                "steps",
                &self
                    .steps
                    .iter()
                    .map(|(t, v, _)| (t, v))
                    .collect::<Vec<_>>(),
            )
            .field("renames", &self.renames)
            .finish()
    }
}

impl UpcasterRegistryBuilder {
    /// Declares the schema version this code writes and reads for `event_type`.
    #[must_use]
    pub fn current(mut self, event_type: impl Into<String>, version: u32) -> Self {
        self.current.push((event_type.into(), version));
        self
    }

    /// Registers a JSON-to-JSON step lifting `event_type` from `from` to `from + 1`.
    #[must_use]
    pub fn step<F>(mut self, event_type: impl Into<String>, from: u32, f: F) -> Self
    where
        F: Fn(Value) -> Result<Value, String> + Send + Sync + 'static,
    {
        self.steps.push((event_type.into(), from, Box::new(f)));
        self
    }

    /// Registers a typed step: the stored payload decodes as `Old`, `f` maps it to `New`.
    #[must_use]
    pub fn typed_step<Old, New, F>(self, event_type: impl Into<String>, from: u32, f: F) -> Self
    where
        Old: DeserializeOwned,
        New: Serialize,
        F: Fn(Old) -> New + Send + Sync + 'static,
    {
        self.step(event_type, from, move |v| {
            let old: Old = serde_json::from_value(v).map_err(|e| e.to_string())?;
            serde_json::to_value(f(old)).map_err(|e| e.to_string())
        })
    }

    /// Reads events stored under the old type name `from` as `to`. The stored schema
    /// version continues in `to`'s chain.
    #[must_use]
    pub fn rename(mut self, from: impl Into<String>, to: impl Into<String>) -> Self {
        self.renames.push((from.into(), to.into()));
        self
    }

    /// Validates the chains: no duplicate declarations or steps, no step at or past the
    /// current version, no gap between v1 and current, no steps for undeclared types,
    /// no ambiguous or looping renames.
    ///
    /// # Errors
    /// The first [`UpcastError`] found.
    pub fn build(self) -> Result<UpcasterRegistry, UpcastError> {
        let mut current = HashMap::new();
        for (t, v) in self.current {
            if v == 0 || current.insert(t.clone(), v).is_some() {
                return Err(UpcastError::DuplicateDeclaration { event_type: t });
            }
        }
        let mut renames = HashMap::new();
        for (from, to) in self.renames {
            if from == to
                || current.contains_key(&from)
                || renames.insert(from.clone(), to).is_some()
            {
                return Err(UpcastError::DuplicateDeclaration { event_type: from });
            }
        }
        for start in renames.keys() {
            let mut t = start;
            for _ in 0..=renames.len() {
                match renames.get(t) {
                    Some(next) if next == start => {
                        return Err(UpcastError::RenameCycle {
                            event_type: start.clone(),
                        });
                    }
                    Some(next) => t = next,
                    None => break,
                }
            }
        }
        let mut steps: BTreeMap<(String, u32), Upcaster> = BTreeMap::new();
        for (t, from, f) in self.steps {
            let Some(&cur) = current.get(&t) else {
                return Err(UpcastError::UndeclaredType { event_type: t });
            };
            if from == 0 || from >= cur {
                return Err(UpcastError::StepPastCurrent {
                    event_type: t,
                    from,
                    current: cur,
                });
            }
            if steps.contains_key(&(t.clone(), from)) {
                return Err(UpcastError::DuplicateStep {
                    event_type: t,
                    from,
                });
            }
            steps.insert((t, from), f);
        }
        for (t, &cur) in &current {
            if let Some(missing) = (1..cur).find(|v| !steps.contains_key(&(t.clone(), *v))) {
                return Err(UpcastError::Gap {
                    event_type: t.clone(),
                    missing,
                    current: cur,
                });
            }
        }
        Ok(UpcasterRegistry {
            current,
            steps,
            renames,
        })
    }
}

/// A validated set of upcast chains and type renames, applied on every read path.
///
/// Event types that were never declared pass through unchanged.
#[derive(Default)]
pub struct UpcasterRegistry {
    current: HashMap<String, u32>,
    steps: BTreeMap<(String, u32), Upcaster>,
    renames: HashMap<String, String>,
}

impl fmt::Debug for UpcasterRegistry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UpcasterRegistry")
            .field("current", &self.current)
            .field("steps", &self.steps.keys().collect::<Vec<_>>())
            .field("renames", &self.renames)
            .finish()
    }
}

impl UpcasterRegistry {
    /// Starts a registry.
    #[must_use]
    pub fn builder() -> UpcasterRegistryBuilder {
        UpcasterRegistryBuilder::default()
    }

    /// The current schema version declared for `event_type` (after renames).
    #[must_use]
    pub fn current_version(&self, event_type: &str) -> Option<u32> {
        self.current.get(self.resolve(event_type)).copied()
    }

    fn resolve<'a>(&'a self, mut event_type: &'a str) -> &'a str {
        // Build-time validation rules out cycles, so this terminates.
        while let Some(next) = self.renames.get(event_type) {
            event_type = next;
        }
        event_type
    }

    /// Lifts a stored `(type, version, payload)` to the current type name and version.
    ///
    /// # Errors
    /// [`UpcastError::FutureVersion`] when the stored version is newer than this code
    /// knows; [`UpcastError::StepFailed`] when a step rejects the payload.
    pub fn upcast(
        &self,
        event_type: &str,
        schema_version: u32,
        mut payload: Value,
    ) -> Result<(String, u32, Value), UpcastError> {
        let event_type = self.resolve(event_type);
        let Some(&current) = self.current.get(event_type) else {
            return Ok((event_type.to_owned(), schema_version, payload));
        };
        if schema_version > current {
            return Err(UpcastError::FutureVersion {
                event_type: event_type.to_owned(),
                found: schema_version,
                current,
            });
        }
        let mut v = schema_version.max(1);
        while v < current {
            let step =
                self.steps
                    .get(&(event_type.to_owned(), v))
                    .ok_or_else(|| UpcastError::Gap {
                        event_type: event_type.to_owned(),
                        missing: v,
                        current,
                    })?;
            payload = step(payload).map_err(|reason| UpcastError::StepFailed {
                event_type: event_type.to_owned(),
                from: v,
                reason,
            })?;
            v += 1;
        }
        Ok((event_type.to_owned(), current, payload))
    }

    /// Whether reading `event_type` at `schema_version` changes anything.
    #[must_use]
    pub fn needs_upcast(&self, event_type: &str, schema_version: u32) -> bool {
        self.renames.contains_key(event_type)
            || self
                .current
                .get(event_type)
                .is_some_and(|&c| c != schema_version)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;
    use serde_json::json;

    /// The seed's example: `OrderPlaced` v1 had `amount`, v2 renamed it to `total_amount`.
    fn order_placed_v1_to_v2(mut v: Value) -> Result<Value, String> {
        let obj = v.as_object_mut().ok_or("payload is not an object")?;
        let amount = obj
            .remove("amount")
            .ok_or("v1 OrderPlaced has no `amount`")?;
        obj.insert("total_amount".into(), amount);
        Ok(v)
    }

    #[test]
    fn seed_example_lifts_amount_to_total_amount() {
        let reg = UpcasterRegistry::builder()
            .current("OrderPlaced", 2)
            .step("OrderPlaced", 1, order_placed_v1_to_v2)
            .build()
            .unwrap();
        let (t, v, p) = reg
            .upcast(
                "OrderPlaced",
                1,
                json!({ "amount": 10, "customer_id": "c" }),
            )
            .unwrap();
        assert_eq!((t.as_str(), v), ("OrderPlaced", 2));
        assert_eq!(p, json!({ "total_amount": 10, "customer_id": "c" }));
        // current-version payloads pass through unchanged
        let (_, _, p2) = reg
            .upcast("OrderPlaced", 2, json!({ "total_amount": 1 }))
            .unwrap();
        assert_eq!(p2, json!({ "total_amount": 1 }));
        // a v1 payload without amount is a typed error, not a panic
        assert!(matches!(
            reg.upcast("OrderPlaced", 1, json!({})),
            Err(UpcastError::StepFailed { from: 1, .. })
        ));
    }

    #[test]
    fn validation_rejects_bad_chains() {
        let id = |v: Value| Ok(v);
        let gap = UpcasterRegistry::builder()
            .current("A", 3)
            .step("A", 1, id)
            .build();
        assert!(matches!(gap, Err(UpcastError::Gap { missing: 2, .. })));
        let dup = UpcasterRegistry::builder()
            .current("A", 2)
            .step("A", 1, id)
            .step("A", 1, id)
            .build();
        assert!(matches!(
            dup,
            Err(UpcastError::DuplicateStep { from: 1, .. })
        ));
        let past = UpcasterRegistry::builder()
            .current("A", 2)
            .step("A", 1, id)
            .step("A", 2, id)
            .build();
        assert!(matches!(
            past,
            Err(UpcastError::StepPastCurrent {
                from: 2,
                current: 2,
                ..
            })
        ));
        let undeclared = UpcasterRegistry::builder().step("B", 1, id).build();
        assert!(matches!(
            undeclared,
            Err(UpcastError::UndeclaredType { .. })
        ));
        let twice = UpcasterRegistry::builder()
            .current("A", 1)
            .current("A", 2)
            .build();
        assert!(matches!(
            twice,
            Err(UpcastError::DuplicateDeclaration { .. })
        ));
        let cycle = UpcasterRegistry::builder()
            .rename("A", "B")
            .rename("B", "A")
            .build();
        assert!(matches!(cycle, Err(UpcastError::RenameCycle { .. })));
    }

    #[test]
    fn future_versions_are_rejected() {
        let reg = UpcasterRegistry::builder().current("A", 1).build().unwrap();
        assert!(matches!(
            reg.upcast("A", 2, json!({})),
            Err(UpcastError::FutureVersion {
                found: 2,
                current: 1,
                ..
            })
        ));
    }

    #[test]
    fn renames_and_typed_steps() {
        #[derive(Deserialize)]
        struct V1 {
            carrier: String,
        }
        #[derive(Serialize)]
        struct V2 {
            carrier: String,
            tracking: Option<String>,
        }
        let reg = UpcasterRegistry::builder()
            .current("OrderShipped", 2)
            .rename("OrderDispatched", "OrderShipped")
            .typed_step("OrderShipped", 1, |o: V1| V2 {
                carrier: o.carrier,
                tracking: None,
            })
            .build()
            .unwrap();
        let (t, v, p) = reg
            .upcast("OrderDispatched", 1, json!({ "carrier": "dhl" }))
            .unwrap();
        assert_eq!((t.as_str(), v), ("OrderShipped", 2));
        assert_eq!(p, json!({ "carrier": "dhl", "tracking": null }));
        assert_eq!(reg.current_version("OrderDispatched"), Some(2));
        assert!(matches!(
            reg.upcast("OrderShipped", 1, json!({ "x": 1 })),
            Err(UpcastError::StepFailed { .. })
        ));
    }
}

#[cfg(test)]
mod laws {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    /// Step `k` of a generated chain: a distinct, order-sensitive transformation.
    fn step(k: u32, op: u8) -> impl Fn(Value) -> Result<Value, String> + Send + Sync + Clone {
        move |mut v: Value| {
            let obj = v.as_object_mut().ok_or("not an object")?;
            let n = obj.get("n").and_then(Value::as_i64).unwrap_or(0);
            let n = match op % 3 {
                0 => n.wrapping_add(i64::from(k)),
                1 => n.wrapping_mul(3).wrapping_sub(1),
                _ => -n,
            };
            obj.insert("n".into(), json!(n));
            obj.insert(format!("v{k}"), json!(true));
            Ok(v)
        }
    }

    proptest! {
        /// Composed upcasting equals applying each step in order.
        #[test]
        fn composed_upcasters_equal_steps_in_order(ops in prop::collection::vec(any::<u8>(), 0..12), start in 1..13u32, n in any::<i32>()) {
            let current = ops.len() as u32 + 1;
            let start = start.min(current);
            let mut b = UpcasterRegistry::builder().current("E", current);
            for (i, op) in ops.iter().enumerate() {
                b = b.step("E", i as u32 + 1, step(i as u32 + 1, *op));
            }
            let reg = b.build().expect("valid chain");
            let input = json!({ "n": n });
            let mut expected = input.clone();
            for k in start..current {
                expected = step(k, ops[(k - 1) as usize])(expected).expect("step");
            }
            let (t, v, got) = reg.upcast("E", start, input).expect("upcast");
            prop_assert_eq!((t.as_str(), v), ("E", current));
            prop_assert_eq!(got, expected);
        }

        /// Versions newer than the registry knows are rejected, never passed through.
        #[test]
        fn unknown_future_versions_are_rejected(current in 1..50u32, ahead in 1..1000u32) {
            let mut b = UpcasterRegistry::builder().current("E", current);
            for k in 1..current {
                b = b.step("E", k, Ok);
            }
            let reg = b.build().expect("valid");
            let is_future = matches!(reg.upcast("E", current + ahead, json!({})), Err(UpcastError::FutureVersion { .. }));
            prop_assert!(is_future);
        }

        /// Any chain with a missing step is rejected at build time.
        #[test]
        fn gaps_are_always_detected(current in 2..30u32, missing in 1..29u32) {
            let missing = 1 + (missing - 1) % (current - 1);
            let mut b = UpcasterRegistry::builder().current("E", current);
            for k in (1..current).filter(|k| *k != missing) {
                b = b.step("E", k, Ok);
            }
            let is_gap = matches!(b.build(), Err(UpcastError::Gap { missing: m, .. }) if m == missing);
            prop_assert!(is_gap);
        }
    }
}
