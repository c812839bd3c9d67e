//! The generated types agree with the catalog embedded in the crate.

use edubus_events::{CjAssessmentCompletedV1, Event, EventType, catalog, sources};

#[test]
fn every_event_type_matches_the_embedded_catalog() {
    let catalog = catalog();
    let specs: Vec<_> = catalog.events().collect();
    assert_eq!(EventType::ALL.len(), specs.len());
    for (t, spec) in EventType::ALL.iter().zip(&specs) {
        assert_eq!(t.name(), spec.name, "{t}");
        assert_eq!(t.version(), spec.version, "{t}");
        assert_eq!(t.topic_name(), spec.topic, "{t}");
        assert_eq!(t.key_field(), spec.key, "{t}");
        assert_eq!(
            EventType::from_name_version(&spec.name, spec.version),
            Some(*t)
        );
        assert_eq!(t.to_string(), spec.id());
    }
}

#[test]
fn the_embedded_sources_are_the_catalog_files() {
    let names: Vec<&str> = sources().iter().map(|(name, _)| *name).collect();
    assert!(names.contains(&"attendance.toml"), "{names:?}");
    assert!(names.windows(2).all(|w| w[0] < w[1]), "sorted: {names:?}");
    assert_eq!(catalog().contexts.len(), names.len());
}

#[test]
fn seed_004_topics_follow_the_huleedu_template() {
    assert_eq!(CjAssessmentCompletedV1::NAME, "cj_assessment.completed");
    assert_eq!(
        CjAssessmentCompletedV1::TOPIC,
        "huleedu.cj_assessment.completed.v1"
    );
    assert_eq!(
        CjAssessmentCompletedV1::EVENT_TYPE.topic_name(),
        "huleedu.cj_assessment.completed.v1"
    );
}
