#![no_main]
//! The webhook's decoder against arbitrary bodies: it may refuse, never panic, and what it
//! accepts must survive the write-ahead log's record format unchanged.

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(items) = clusteraudit_collector::batch::decode_event_list(data) {
        let record = clusteraudit_collector::batch::encode_record("tp-fuzz", &items);
        let (topic, decoded) = clusteraudit_collector::batch::decode_record(&record)
            .expect("a record just encoded decodes");
        assert_eq!(topic, "tp-fuzz");
        assert_eq!(decoded.len(), items.len());
        for (raw, item) in decoded.iter().zip(&items) {
            assert_eq!(*raw, item.as_bytes());
        }
    }
    let _ = clusteraudit_collector::batch::decode_record(data);
});
