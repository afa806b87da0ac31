//! Coalescing: updates of one state claimed together go out as one PATCH,
//! later fields winning. Each body holds exactly its update mask's fields
//! (an unset masked field is `null`), so merging the bodies in order is
//! applying the masks in order. Deletes are never merged (a group holds
//! at most one write of a state that is not an update).

use crate::grpc::submit::Change;

/// One request to send and the writes (by index) it answers for.
#[derive(Debug)]
pub struct Merged {
    pub change: Change,
    pub writes: Vec<usize>,
}

/// Merges `changes` (in queue order): updates of one state become one
/// PATCH at the first one's place.
pub fn coalesce(changes: Vec<(usize, Change)>) -> Vec<Merged> {
    let mut out: Vec<Merged> = Vec::with_capacity(changes.len());
    let mut at: std::collections::HashMap<String, usize> = Default::default();
    for (index, change) in changes {
        let Some(body) = &change.body else {
            out.push(Merged {
                change,
                writes: vec![index],
            });
            continue;
        };
        match at.get(&change.name).copied() {
            Some(i) if out[i].change.body.is_some() => {
                let merged = &mut out[i];
                if let Some(into) = &mut merged.change.body {
                    for (k, v) in body {
                        into.insert(k.clone(), v.clone());
                    }
                }
                merged.writes.push(index);
            }
            _ => {
                at.insert(change.name.clone(), out.len());
                out.push(Merged {
                    change,
                    writes: vec![index],
                });
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn update(name: &str, body: serde_json::Value) -> Change {
        Change {
            name: name.into(),
            path: name.into(),
            body: body.as_object().cloned(),
            allow_missing: false,
        }
    }

    #[test]
    fn later_fields_win_and_every_write_is_answered() {
        let merged = coalesce(vec![
            (
                0,
                update("a", json!({"runState": "pending", "errorCode": 1})),
            ),
            (1, update("b", json!({"runState": "fail"}))),
            (
                2,
                update("a", json!({"runState": "success", "resultMessage": null})),
            ),
        ]);
        assert_eq!(merged.len(), 2);
        assert_eq!(merged[0].writes, vec![0, 2]);
        assert_eq!(
            serde_json::Value::Object(merged[0].change.body.clone().unwrap()),
            json!({"runState": "success", "errorCode": 1, "resultMessage": null})
        );
        assert_eq!(merged[1].writes, vec![1]);
    }

    #[test]
    fn deletes_stay_alone() {
        let delete = Change {
            name: "a".into(),
            path: "a".into(),
            body: None,
            allow_missing: true,
        };
        let merged = coalesce(vec![(0, delete.clone()), (1, delete)]);
        assert_eq!(merged.len(), 2);
    }
}
