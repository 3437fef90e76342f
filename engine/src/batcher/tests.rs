use super::*;
use arrow::array::{Array, AsArray};
use arrow::datatypes::Int64Type;

fn good_json(i: i64) -> String {
    format!(
        r#"{{"transaction_id":"00000000-0000-4000-8000-{i:012}","sold_at":"2026-11-27T14:{:02}:{:02}.123Z","dealer_id":"D0001","dealer_city":"Austin","dealer_state":"TX","brand":"Toyota","model":"Camry","model_year":2026,"body_type":"sedan","fuel_type":"hybrid","color":"white","condition":"new","mileage_km":12,"price":31999.99,"currency":"USD","payment_method":"loan","customer_age":{},"salesperson_id":"D0001-S01","status":"completed"}}"#,
        (i / 60) % 60,
        i % 60,
        if i % 7 == 0 {
            "null".to_string()
        } else {
            (20 + i % 50).to_string()
        }
    )
}

fn msg(offset: i64, payload: Option<Vec<u8>>) -> Message {
    Message {
        topic: Arc::from("t"),
        partition: (offset % 3) as i32,
        offset,
        timestamp_ms: Some(1_000 + offset),
        payload: payload.map(Into::into),
    }
}

fn good(offset: i64) -> Message {
    msg(offset, Some(good_json(offset).into_bytes()))
}

#[test]
fn a_clean_batch_decodes_in_one_pass_with_metadata() {
    let messages: Vec<Message> = (0..1000).map(good).collect();
    let out = decode_batch(&messages, 1 << 20).unwrap();
    assert!(out.dead_letters.is_empty());
    assert_eq!(out.rows.num_rows(), 1000);
    assert_eq!(out.rows.schema(), source_schema());
    let offsets = out
        .rows
        .column_by_name("_offset")
        .unwrap()
        .as_primitive::<Int64Type>();
    assert_eq!(offsets.values().to_vec(), (0..1000).collect::<Vec<i64>>());
    let price = out.rows.column_by_name("price").unwrap();
    assert_eq!(
        arrow::util::display::array_value_to_string(price, 5).unwrap(),
        "31999.99"
    );
    let age = out.rows.column_by_name("customer_age").unwrap();
    assert!(age.is_null(0) && !age.is_null(1));
}

fn reasons_for(bad: Vec<(&str, Option<Vec<u8>>)>) -> Vec<(String, String)> {
    // Interleave each bad message between good ones so neighbours must survive.
    let mut messages = Vec::new();
    let mut offset = 0;
    for (_, payload) in &bad {
        messages.push(good(offset));
        messages.push(msg(offset + 1, payload.clone()));
        offset += 2;
    }
    messages.push(good(offset));
    let out = decode_batch(&messages, 4096).unwrap();
    assert_eq!(
        out.rows.num_rows(),
        bad.len() + 1,
        "every good message survives"
    );
    let offsets = out
        .rows
        .column_by_name("_offset")
        .unwrap()
        .as_primitive::<Int64Type>();
    assert!(
        offsets.values().iter().all(|o| o % 2 == 0),
        "only good rows are rows"
    );
    assert_eq!(out.dead_letters.len(), bad.len());
    let mut dead = out.dead_letters.clone();
    dead.sort_by_key(|d| d.offset);
    dead.iter()
        .zip(&bad)
        .map(|(d, (name, _))| {
            assert_eq!(d.topic.as_ref(), "t");
            assert_eq!(d.partition, (d.offset % 3) as i32);
            (name.to_string(), d.reason.clone())
        })
        .collect()
}

#[test]
fn each_kind_of_bad_message_is_a_dead_letter_with_its_reason() {
    let missing_price = good_json(1).replace(r#""price":31999.99,"#, "");
    let wrong_type = good_json(1).replace(r#""model_year":2026"#, r#""model_year":"twenty""#);
    let bad_time = good_json(1).replace("2026-11-27T14", "yesterday afternoon");
    let mut invalid_utf8 = good_json(1).into_bytes();
    invalid_utf8[40] = 0xff;
    let two = format!("{}{}", good_json(1), good_json(2));
    let truncated = good_json(1)[..100].to_string();
    let cases: Vec<(&str, Option<Vec<u8>>)> = vec![
        ("broken", Some(b"{\"transaction_id\": oops}".to_vec())),
        ("truncated", Some(truncated.into_bytes())),
        ("wrong_type", Some(wrong_type.into_bytes())),
        ("missing", Some(missing_price.into_bytes())),
        ("utf8", Some(invalid_utf8)),
        ("two", Some(two.into_bytes())),
        ("none", None),
        ("blank", Some(b"   ".to_vec())),
        ("array", Some(b"[1,2,3]".to_vec())),
        ("oversize", Some(vec![b' '; 5000])),
        ("bad_time", Some(bad_time.into_bytes())),
    ];
    let reasons = reasons_for(cases);
    let expect = [
        ("broken", "malformed JSON"),
        ("truncated", "incomplete"),
        ("wrong_type", "model_year"),
        ("missing", "missing required field `price`"),
        ("utf8", "invalid UTF-8 at byte 40"),
        ("two", "2 JSON values"),
        ("none", "null"),
        ("blank", "no JSON object"),
        ("array", "schema violation"),
        ("oversize", "exceeds max_message_bytes"),
        ("bad_time", "sold_at"),
    ];
    for (name, reason) in &reasons {
        println!("{name:>10}: {reason}");
    }
    for ((name, reason), (want_name, want)) in reasons.iter().zip(expect) {
        assert_eq!(name, want_name);
        assert!(
            reason.contains(want),
            "{name}: reason {reason:?} lacks {want:?}"
        );
    }
}

#[test]
fn many_bad_messages_in_one_batch_keep_every_good_one() {
    let messages: Vec<Message> = (0..2000)
        .map(|i| match i % 10 {
            3 => msg(i, Some(b"{not json".to_vec())),
            7 => msg(
                i,
                Some(good_json(i).replace("2026,", "\"x\",").into_bytes()),
            ),
            _ => good(i),
        })
        .collect();
    let out = decode_batch(&messages, 1 << 20).unwrap();
    assert_eq!(out.rows.num_rows(), 1600);
    assert_eq!(out.dead_letters.len(), 400);
    let offsets = out
        .rows
        .column_by_name("_offset")
        .unwrap()
        .as_primitive::<Int64Type>();
    assert!(offsets.values().windows(2).all(|w| w[0] < w[1]));
    assert!(offsets.values().iter().all(|o| o % 10 != 3 && o % 10 != 7));
}

#[test]
fn event_times_outside_the_accepted_range_are_dead_letters_that_say_why() {
    let with = |sold_at: &str| good_json(1).replace("\"2026-11-27T14:00:01.123Z\"", sold_at);
    let cases = [
        ("\"2300-01-01T00:00:00Z\"", "past the wall clock"),
        ("\"1969-07-20T20:17:00Z\"", "before 2000-01-01"),
        ("1767225600", "not seconds"),
        ("1767225600000000", "micro- or nanoseconds"),
        ("1767225600000000000", "micro- or nanoseconds"),
    ];
    let mut messages: Vec<Message> = cases
        .iter()
        .enumerate()
        .map(|(i, (t, _))| msg(i as i64, Some(with(t).into_bytes())))
        .collect();
    // An epoch number in milliseconds, an offset and a naive time are fine.
    messages.push(msg(10, Some(with("1767225600000").into_bytes())));
    messages.push(msg(
        11,
        Some(with("\"2026-01-01T05:00:00+05:00\"").into_bytes()),
    ));
    messages.push(msg(12, Some(with("\"2026-01-01 00:00:00\"").into_bytes())));
    let out = decode_batch(&messages, 1 << 20).unwrap();
    assert_eq!(out.rows.num_rows(), 3, "{:?}", out.dead_letters);
    assert_eq!(out.dead_letters.len(), cases.len());
    for (i, (sold_at, why)) in cases.iter().enumerate() {
        let d = out
            .dead_letters
            .iter()
            .find(|d| d.offset == i as i64)
            .expect("a dead letter per case");
        assert!(
            d.reason.contains("sold_at") && d.reason.contains(why),
            "{}",
            d.reason
        );
        // The hint about epoch units is for numbers only.
        let number = !sold_at.starts_with('"');
        assert_eq!(d.reason.contains("epoch number"), number, "{}", d.reason);
    }
    let times = out.rows.column_by_name("sold_at").unwrap();
    let times = times.as_primitive::<arrow::datatypes::TimestampMillisecondType>();
    assert!((0..3).all(|i| times.value(i) == 1_767_225_600_000));
}

#[test]
fn the_accepted_range_is_configurable() {
    let rules = DecodeRules {
        max_message_bytes: 1 << 20,
        min_event_ms: 1_900_000_000_000,
        max_future: Duration::from_secs(0),
    };
    let out = decode_batch_with(&[good(1)], &rules).unwrap();
    assert_eq!(out.rows.num_rows(), 0);
    assert!(out.dead_letters[0].reason.contains("events.min_time"));
}

#[test]
fn objects_with_bad_commas_are_malformed_json() {
    let g = good_json(1);
    for bad in [
        g.replacen(",\"currency\"", ",,\"currency\"", 1),
        format!("{},}}", &g[..g.len() - 1]),
        g.replacen(",\"currency\"", " \"currency\"", 1),
    ] {
        let out = decode_batch(&[msg(0, Some(bad.into_bytes()))], 1 << 20).unwrap();
        assert_eq!(out.rows.num_rows(), 0);
        assert!(
            out.dead_letters[0].reason.starts_with("malformed JSON"),
            "{}",
            out.dead_letters[0].reason
        );
    }
}

fn limits(max_rows: usize) -> BatchLimits {
    BatchLimits {
        max_rows,
        max_bytes: 1 << 30,
        linger: Duration::from_secs(1),
        max_message_bytes: 1 << 20,
    }
}

/// Read ahead from `source` during a "commit" of `commit`, then collect the next batch.
async fn ahead_then_collect<S: Source>(
    source: &mut S,
    limits: &BatchLimits,
    commit: Duration,
) -> (usize, Collected, ReadAhead) {
    let rules = DecodeRules::with_max_message_bytes(1 << 20);
    let mut ahead = ReadAhead::default();
    read_ahead_while(
        source,
        limits,
        &rules,
        &mut ahead,
        tokio::time::sleep(commit),
    )
    .await;
    let held = ahead.held();
    let batch = collect_batch(source, limits, &CancellationToken::new(), &mut ahead)
        .await
        .unwrap();
    (held, batch, ahead)
}

/// Read ahead from `source` while a "commit" of `secs` seconds goes on.
async fn read_ahead_for<S: Source>(
    source: &mut S,
    limits: &BatchLimits,
    rules: &DecodeRules,
    ahead: &mut ReadAhead,
    secs: u64,
) {
    read_ahead_while(
        source,
        limits,
        rules,
        ahead,
        tokio::time::sleep(Duration::from_secs(secs)),
    )
    .await;
}

fn offsets_of(c: &Collected) -> Vec<i64> {
    c.messages.iter().map(|m| m.offset).collect()
}

/// What is read ahead while a batch commits makes the next batch, decoded as the batcher would,
/// and nothing is read twice or skipped: every message once, in order, in batches of the limit.
#[tokio::test(start_paused = true)]
async fn reading_ahead_hands_out_every_message_once_in_order_with_its_decoding() {
    use crate::source::memory::MemorySource;
    let all: Vec<Message> = (0..25).map(good).collect();
    let mut source = MemorySource::new(all.clone());
    let (limits, rules) = (limits(10), DecodeRules::with_max_message_bytes(1 << 20));
    let shutdown = CancellationToken::new();
    let mut ahead = ReadAhead::default();
    let mut seen = Vec::new();
    loop {
        let batch = collect_batch(&mut source, &limits, &shutdown, &mut ahead)
            .await
            .unwrap();
        assert!(batch.messages.len() <= 10, "a batch keeps the row limit");
        if let Some(d) = batch.decoded {
            assert!(
                batch
                    .messages
                    .windows(2)
                    .all(|w| (w[0].partition, w[0].offset) < (w[1].partition, w[1].offset)),
                "a batch read ahead is in processing order, so its decoding is used"
            );
            let d = d.await.unwrap().unwrap();
            let direct = decode_batch_with(&batch.messages, &rules).unwrap();
            assert_eq!(
                d.rows, direct.rows,
                "the decoding read ahead is the batch's own"
            );
        }
        seen.extend(offsets_of(&Collected {
            messages: batch.messages.clone(),
            end: batch.end,
            decoded: None,
        }));
        if batch.end == BatchEnd::SourceExhausted {
            break;
        }
        // The batch "commits" for 5 s; the next one is read meanwhile (one batch at most).
        read_ahead_for(&mut source, &limits, &rules, &mut ahead, 5).await;
        assert!(ahead.held() <= 10, "at most one batch is read ahead");
    }
    seen.sort();
    let want: Vec<i64> = all.iter().map(|m| m.offset).collect();
    assert_eq!(seen, want, "every message once");
}

/// A commit shorter than the linger leaves an open batch: the next collect completes it, its
/// linger counted from its first message (not from the collect), so it closes on time.
#[tokio::test(start_paused = true)]
async fn a_batch_begun_ahead_is_completed_by_the_next_collect_within_its_linger() {
    use crate::source::memory::MemorySource;
    struct Trickle {
        inner: MemorySource,
        every: Duration,
    }
    impl Source for Trickle {
        async fn next_message(&mut self) -> Result<Option<Message>, SourceError> {
            tokio::time::sleep(self.every).await;
            self.inner.next_message().await
        }
        async fn commit(
            &mut self,
            c: &[crate::source::PartitionCommit],
        ) -> Result<(), SourceError> {
            self.inner.commit(c).await
        }
        async fn topic_view(
            &mut self,
            max_age: Duration,
        ) -> Result<crate::source::TopicView, SourceError> {
            self.inner.topic_view(max_age).await
        }
    }
    let mut source = Trickle {
        inner: MemorySource::new((0..100).map(good).collect()),
        every: Duration::from_millis(100),
    };
    let started = Instant::now();
    let (held, batch, _) =
        ahead_then_collect(&mut source, &limits(1000), Duration::from_millis(350)).await;
    assert_eq!(held, 3, "three messages arrived during the commit");
    assert_eq!(batch.end, BatchEnd::Linger);
    assert!(
        batch.decoded.is_none(),
        "an open batch is decoded by the pipeline"
    );
    // First message at 100 ms, linger 1 s: the batch closes at 1.1 s (750 ms after the collect
    // began, at 350 ms), not 1 s after the collect.
    assert_eq!(started.elapsed(), Duration::from_millis(1100));
    let mut got = offsets_of(&batch);
    got.sort();
    assert_eq!(got, (0..10).collect::<Vec<i64>>());
}

/// An ownership change seen while reading ahead closes the batch read so far; the message that
/// came after it starts the batch after that one.
#[tokio::test(start_paused = true)]
async fn an_ownership_change_while_reading_ahead_closes_the_batch_before_it() {
    use crate::source::memory::MemorySource;
    let all: Vec<Message> = (0..30).map(good).collect();
    let mut source = MemorySource::new(all).with_rebalances(vec![4]);
    let _ = source.take_events();
    let (_, batch, mut ahead) =
        ahead_then_collect(&mut source, &limits(10), Duration::from_secs(1)).await;
    assert_eq!(batch.end, BatchEnd::Rebalance);
    let mut got = offsets_of(&batch);
    got.sort();
    assert_eq!(got, vec![0, 1, 2, 3]);
    assert!(source.has_events());
    let _ = source.take_events();
    // Nothing committed: the source starts over at 0, after the carried message.
    let next = collect_batch(
        &mut source,
        &limits(10),
        &CancellationToken::new(),
        &mut ahead,
    )
    .await
    .unwrap();
    assert_eq!(next.messages.first().map(|m| m.offset), Some(0));
}

/// `good_json(i)` with its brand written as `brand` (JSON text inside the quotes).
fn with_brand(i: i64, brand: &str) -> Message {
    let text = good_json(i).replace("\"brand\":\"Toyota\"", &format!("\"brand\":\"{brand}\""));
    msg(i, Some(text.into_bytes()))
}

/// A character beyond U+FFFF written as a JSON escape (a UTF-16 surrogate pair, as Python's
/// `json.dumps` writes every non-ASCII character) decodes to that character on either path;
/// broken pairs are dead letters that say so, never a panic or a wrong character.
#[test]
fn surrogate_pair_escapes_decode_to_their_character_and_broken_ones_are_dead_letters() {
    let messages = vec![
        with_brand(0, r"\ud83d\ude97"),        // 🚗 U+1F697
        with_brand(1, r"\ud840\udc00"),        // 𠀀 U+20000
        with_brand(2, r"\ud87e\udc00 \u4e3d"), // 丽 U+2F800, 丽 U+4E3D
        with_brand(3, r"\udbff\udfff"),        // U+10FFFF
        with_brand(4, r"\ud800\ud801"),        // two high surrogates
        with_brand(5, r"\ud83d"),              // a lone high surrogate
        with_brand(6, r"\ude97x"),             // a lone low surrogate
        with_brand(7, r"\\ud840\\udc00"),      // escaped backslashes: plain text
    ];
    let want = [
        "🚗",
        "\u{20000}",
        "\u{2F800} \u{4E3D}",
        "\u{10FFFF}",
        r"\ud840\udc00",
    ];
    let rules = DecodeRules::with_max_message_bytes(1 << 20);
    // The same batch in a mixed order of messages each path takes, and every path alone.
    for (name, out) in [
        (
            "decode_batch_with",
            decode_batch_with(&messages, &rules).unwrap(),
        ),
        (
            "decode_batch_reference",
            decode_batch_reference(&messages, &rules).unwrap(),
        ),
    ] {
        let brands = out.rows.column_by_name("brand").unwrap().as_string::<i32>();
        let got: Vec<&str> = (0..out.rows.num_rows()).map(|i| brands.value(i)).collect();
        assert_eq!(got, want, "{name}");
        let dead: Vec<(i64, &str)> = out
            .dead_letters
            .iter()
            .map(|d| (d.offset, d.reason.as_str()))
            .collect();
        assert_eq!(dead.len(), 3, "{name}: {dead:?}");
        for (offset, reason) in dead {
            assert!((4..=6).contains(&offset), "{name}: {offset} {reason}");
            assert!(reason.contains("surrogate"), "{name}: {reason}");
        }
    }
}

/// Messages of a partition read ahead before it was assigned (again) are dropped — the source
/// reads it anew from its committed position, and keeping them would let them skip what that
/// re-delivery brings before them (fault run faults-100000-011418 lost 1,779 records that way:
/// a fenced batch's messages were dropped as revoked, the batch read ahead after them was kept).
/// Other partitions' messages and their order stay; the carried first message after the
/// ownership change stays.
#[tokio::test]
async fn an_assignment_drops_what_was_read_ahead_of_its_partitions() {
    use crate::source::TopicPartition;
    let (limits, rules) = (limits(6), DecodeRules::with_max_message_bytes(1 << 20));
    let mut ahead = ReadAhead::default();
    for o in 0..6 {
        ahead.push(good(o), &limits, &rules);
    }
    assert!(ahead.has_batch(), "six messages close a batch");
    for o in 6..8 {
        ahead.push(good(o), &limits, &rules);
    }
    ahead.carry = Some(good(9));
    let p1: std::collections::HashSet<TopicPartition> =
        [TopicPartition::new("t", 1)].into_iter().collect();
    // Offsets 1, 4 (ready) and 7 (being read) are partition 1's.
    assert_eq!(ahead.forget(&p1), 3);
    let ready = ahead.ready.as_ref().unwrap();
    assert_eq!(
        ready.messages.iter().map(|m| m.offset).collect::<Vec<_>>(),
        vec![0, 3, 2, 5],
        "the rest in processing order (partition, offset)"
    );
    assert!(
        ready.decoded.is_none(),
        "the decoding of the whole batch is not used"
    );
    assert_eq!(
        ahead.messages.iter().map(|m| m.offset).collect::<Vec<_>>(),
        vec![6]
    );
    assert_eq!(ahead.bytes, ahead.messages[0].size());
    assert_eq!(ahead.carry.as_ref().map(|m| m.offset), Some(9));
    assert_eq!(ahead.forget(&p1), 0);
}

/// Nothing is read ahead while an ownership change waits to be applied: the message that came
/// with the change (carried to the next batch) stays carried, and no message after it is read.
/// Reading on would mix messages of the new ownership into what the assignment takes for read
/// before it, and drops (the two-engine test on the real services lost offset 0 of a partition
/// so: a commit in flight landed while the change waited, reading ahead meanwhile).
#[tokio::test(start_paused = true)]
async fn nothing_is_read_ahead_while_an_ownership_change_waits() {
    use crate::source::memory::MemorySource;
    let all: Vec<Message> = (0..30).map(good).collect();
    let mut source = MemorySource::new(all).with_rebalances(vec![4]);
    let (limits, rules) = (limits(10), DecodeRules::with_max_message_bytes(1 << 20));
    let mut ahead = ReadAhead::default();
    assert!(!source.take_events().is_empty(), "the first assignment");
    let batch = collect_batch(&mut source, &limits, &CancellationToken::new(), &mut ahead)
        .await
        .unwrap();
    assert_eq!(batch.end, BatchEnd::Rebalance);
    assert_eq!(batch.messages.len(), 4);
    assert!(source.has_events(), "the change waits to be applied");
    let carried = ahead.carry.as_ref().map(|m| m.offset);
    assert!(carried.is_some());
    // A commit in flight lands before the change is applied.
    read_ahead_for(&mut source, &limits, &rules, &mut ahead, 5).await;
    assert_eq!(
        ahead.carry.as_ref().map(|m| m.offset),
        carried,
        "the carried message stays carried"
    );
    assert_eq!(ahead.held(), 1, "nothing read after it");
}

/// A batch collected straight from the source (nothing read ahead) comes in processing order
/// too, each offset once: the pipeline then processes it as it is, without a sorted copy of its
/// messages (a heaptrack of `carflow run` showed that copy, 21.6 MB a batch, at the peak).
#[tokio::test(start_paused = true)]
async fn a_batch_collected_from_the_source_is_in_processing_order() {
    use crate::source::memory::MemorySource;
    // Partitions interleaved as Kafka hands them out, and one message delivered twice.
    let mut all: Vec<Message> = (0..12).map(good).collect();
    all.insert(5, good(4));
    let mut source = MemorySource::new(all);
    let mut ahead = ReadAhead::default();
    let batch = collect_batch(
        &mut source,
        &limits(100),
        &CancellationToken::new(),
        &mut ahead,
    )
    .await
    .unwrap();
    let got: Vec<(i32, i64)> = batch
        .messages
        .iter()
        .map(|m| (m.partition, m.offset))
        .collect();
    let mut want: Vec<(i32, i64)> = (0..12).map(|i| ((i % 3) as i32, i)).collect();
    want.sort();
    assert_eq!(got, want);
}
