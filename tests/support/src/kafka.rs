//! Kafka for the tests, shared by the root tests and `api/tests` (through this crate): the
//! broker (reachable, or one line saying how to start it), a topic per test (deleted on drop),
//! and `wait_for` instead of sleeps. Needs only rdkafka, tokio, uuid and the engine.

use std::time::{Duration, Instant};

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};

/// Poll `cond` until it holds or `timeout` passes; panics with `what` on timeout.
pub async fn wait_for<F, Fut>(what: &str, timeout: Duration, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if cond().await {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The environment variable `key`, or `default`.
pub fn env_or(key: &str, default: &str) -> String {
    std::env::var(key).unwrap_or_else(|_| default.to_string())
}

/// Run `fut` to completion on a fresh runtime in another thread (for cleanup in `Drop`, which
/// may run inside or outside a runtime).
pub fn block_on_thread<F: std::future::Future + Send + 'static>(fut: F) {
    let _ = std::thread::spawn(move || {
        if let Ok(rt) = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        {
            rt.block_on(fut);
        }
    })
    .join();
}

/// A unique name for a test resource.
pub fn unique(prefix: &str) -> String {
    format!(
        "{prefix}-{}",
        &uuid::Uuid::new_v4().simple().to_string()[..10]
    )
}

/// Apache Kafka.
#[derive(Clone)]
pub struct Kafka {
    pub brokers: String,
}

impl Kafka {
    /// The broker of `CARFLOW_KAFKA_BROKERS` (default 127.0.0.1:9092); panics in one line if it
    /// does not answer.
    pub fn get() -> Self {
        let brokers = env_or("CARFLOW_KAFKA_BROKERS", "127.0.0.1:9092");
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", &brokers)
            .create()
            .expect("kafka client");
        if let Err(e) = consumer.fetch_metadata(None, Duration::from_secs(10)) {
            panic!(
                "Kafka is not reachable at {brokers} ({e}): start it with: deploy/services.sh up kafka"
            );
        }
        Self { brokers }
    }

    fn admin(&self) -> AdminClient<DefaultClientContext> {
        ClientConfig::new()
            .set("bootstrap.servers", &self.brokers)
            .create()
            .expect("kafka admin client")
    }

    /// A new topic with `partitions`, deleted when dropped; returns once its metadata shows
    /// every partition.
    pub async fn topic(&self, prefix: &str, partitions: i32) -> Topic {
        let name = unique(prefix);
        let t = NewTopic::new(&name, partitions, TopicReplication::Fixed(1));
        let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
        for r in self
            .admin()
            .create_topics([&t], &opts)
            .await
            .expect("create topic")
        {
            r.unwrap_or_else(|(t, e)| panic!("create topic {t}: {e}"));
        }
        let (brokers, topic) = (self.brokers.clone(), name.clone());
        wait_for(
            "the new topic's metadata",
            Duration::from_secs(30),
            move || {
                let (brokers, topic) = (brokers.clone(), topic.clone());
                async move {
                    tokio::task::spawn_blocking(move || {
                        carflow_engine::source::kafka::check_topic(
                            &brokers,
                            &topic,
                            Duration::from_secs(5),
                        )
                    })
                    .await
                    .expect("metadata task")
                        == Ok(partitions as usize)
                }
            },
        )
        .await;
        Topic {
            name,
            kafka: self.clone(),
        }
    }

    /// End offset of every partition of `topic`, once no transaction is open on it.
    ///
    /// `commit_transaction` returns when the coordinator has logged the commit; it writes the
    /// markers to the partitions after that. Until a partition's marker is written its stable end
    /// (what a `read_committed` client, the default, is told) stays before the transaction while
    /// its high watermark is past the messages: the two are compared until they agree (bounded to
    /// 30 s), so the ends returned include every marker of a finished transaction.
    pub fn end_offsets(&self, topic: &str) -> Vec<i64> {
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        loop {
            let stable = self.watermarks(topic, "read_committed");
            let high = self.watermarks(topic, "read_uncommitted");
            if stable == high {
                return high;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "a transaction stayed open on {topic} for 30 s: stable ends {stable:?}, high watermarks {high:?}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn watermarks(&self, topic: &str, isolation: &str) -> Vec<i64> {
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", &self.brokers)
            .set("isolation.level", isolation)
            .create()
            .expect("kafka client");
        (0..partitions(&consumer, topic))
            .map(|p| {
                consumer
                    .fetch_watermarks(topic, p, Duration::from_secs(10))
                    .expect("watermarks")
                    .1
            })
            .collect()
    }

    /// The positions consumer group `group` committed for every partition of `topic` (`None`
    /// where it committed none).
    pub fn committed_offsets(&self, group: &str, topic: &str) -> Vec<Option<i64>> {
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", &self.brokers)
            .set("group.id", group)
            .create()
            .expect("kafka client");
        let n = partitions(&consumer, topic);
        let mut tpl = rdkafka::TopicPartitionList::new();
        for p in 0..n {
            tpl.add_partition(topic, p);
        }
        let committed = consumer
            .committed_offsets(tpl, Duration::from_secs(10))
            .expect("committed offsets");
        (0..n)
            .map(
                |p| match committed.find_partition(topic, p).map(|e| e.offset()) {
                    Some(rdkafka::Offset::Offset(o)) => Some(o),
                    _ => None,
                },
            )
            .collect()
    }
}

/// How many partitions `topic` has.
fn partitions(consumer: &BaseConsumer, topic: &str) -> i32 {
    let md = consumer
        .fetch_metadata(Some(topic), Duration::from_secs(10))
        .expect("metadata");
    md.topics()[0].partitions().len() as i32
}

/// A test topic, deleted when dropped.
pub struct Topic {
    pub name: String,
    kafka: Kafka,
}

impl Drop for Topic {
    fn drop(&mut self) {
        let (name, admin) = (self.name.clone(), self.kafka.admin());
        block_on_thread(async move {
            let _ = admin.delete_topics(&[&name], &AdminOptions::new()).await;
        });
    }
}
