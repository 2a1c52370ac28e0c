//! `Buckets` against `MemStore` and a temp dir: quota, overwrite accounting, copy,
//! multipart completion (twice, and retried after a crash mid-cleanup), and refusals that leave nothing behind.

use std::sync::Arc;

use bytes::Bytes;
use verge_api::Kind;
use verge_store::{DynStore, MemStore};

use super::*;
use crate::controller::Informers;

async fn setup() -> (
    Arc<Buckets>,
    DynStore,
    tempfile::TempDir,
    tokio::sync::watch::Sender<bool>,
) {
    let store: DynStore = Arc::new(MemStore::new());
    let dir = tempfile::tempdir().unwrap();
    let (tx, rx) = tokio::sync::watch::channel(false);
    let informers = Informers::new(store.clone(), rx);
    let b = Arc::new(Buckets::new(
        store.clone(),
        BlobStore::open(dir.path()).unwrap(),
        informers.cache(Kind::Bucket),
    ));
    (b, store, dir, tx)
}

fn code(e: Error) -> Code {
    match e {
        Error::Bucket { code, .. } => code,
        other => panic!("unexpected {other}"),
    }
}

async fn set_spec(store: &DynStore, name: &str, spec: serde_json::Value) {
    let key = object_key(Kind::Bucket, name);
    let kv = store.get(&key).await.unwrap().unwrap();
    let mut obj: Object = serde_json::from_slice(&kv.value).unwrap();
    obj.spec = spec;
    store
        .update(
            &key,
            Bytes::from(serde_json::to_vec(&obj).unwrap()),
            Labels::new(),
            Expect::Any,
        )
        .await
        .unwrap();
}

#[tokio::test]
async fn quota_overwrite_copy_and_delete_keep_usage_exact() {
    let (b, store, _dir, _tx) = setup().await;
    b.create_bucket("photos", Labels::new()).await.unwrap();
    assert_eq!(
        code(b.create_bucket("photos", Labels::new()).await.unwrap_err()),
        Code::BucketAlreadyOwnedByYou
    );
    assert_eq!(
        code(
            b.create_bucket("Bad_Name", Labels::new())
                .await
                .unwrap_err()
        ),
        Code::InvalidBucketName
    );
    set_spec(
        &store,
        "photos",
        serde_json::json!({"quota": "10Ki", "maxObjectSize": "6Ki"}),
    )
    .await;
    let rec = b
        .put_bytes(
            "photos",
            "a",
            Bytes::from(vec![1u8; 4096]),
            PutMeta::default(),
        )
        .await
        .unwrap();
    assert_eq!(rec.size, 4096);
    assert_eq!(b.usage("photos").await.unwrap(), (1, 4096));
    // Overwrite with a smaller object: one object, its new size.
    b.put_bytes(
        "photos",
        "a",
        Bytes::from(vec![2u8; 1000]),
        PutMeta::default(),
    )
    .await
    .unwrap();
    assert_eq!(b.usage("photos").await.unwrap(), (1, 1000));
    assert_eq!(
        code(
            b.put_bytes(
                "photos",
                "big",
                Bytes::from(vec![0u8; 7000]),
                PutMeta::default()
            )
            .await
            .unwrap_err()
        ),
        Code::EntityTooLarge
    );
    b.put_bytes(
        "photos",
        "b",
        Bytes::from(vec![3u8; 6000]),
        PutMeta::default(),
    )
    .await
    .unwrap();
    // 7000 used; 4000 more would pass 10 KiB.
    assert_eq!(
        code(
            b.put_bytes(
                "photos",
                "c",
                Bytes::from(vec![4u8; 4000]),
                PutMeta::default()
            )
            .await
            .unwrap_err()
        ),
        Code::QuotaExceeded
    );
    assert!(matches!(
        code(b.head("photos", "c").await.unwrap_err()),
        Code::NoSuchKey
    ));
    // A copy counts against the quota too.
    assert_eq!(
        code(
            b.copy("photos", "b", "photos", "b2", None)
                .await
                .unwrap_err()
        ),
        Code::QuotaExceeded
    );
    let copied = b.copy("photos", "a", "photos", "a2", None).await.unwrap();
    assert_eq!(copied.sha256, b.head("photos", "a").await.unwrap().0.sha256);
    assert_eq!(b.usage("photos").await.unwrap(), (3, 8000));
    assert!(b.delete("photos", "a").await.unwrap());
    assert!(!b.delete("photos", "a").await.unwrap());
    assert_eq!(b.usage("photos").await.unwrap(), (2, 7000));
    assert_eq!(
        code(b.delete_bucket("photos").await.unwrap_err()),
        Code::BucketNotEmpty
    );
    assert_eq!(
        code(
            b.put_bytes("nope", "k", Bytes::new(), PutMeta::default())
                .await
                .unwrap_err()
        ),
        Code::NoSuchBucket
    );
    assert_eq!(
        code(
            b.put_bytes(
                "photos",
                &"k".repeat(1025),
                Bytes::new(),
                PutMeta::default()
            )
            .await
            .unwrap_err()
        ),
        Code::KeyTooLong
    );
}

#[tokio::test]
async fn multipart_completes_once_with_the_s3_etag() {
    let (b, _store, _dir, _tx) = setup().await;
    b.create_bucket("mpu", Labels::new()).await.unwrap();
    let id = b
        .create_upload("mpu", "video.ts", PutMeta::default())
        .await
        .unwrap();
    let p1 = vec![b'a'; MIN_PART_SIZE as usize];
    let p2 = b"tail".to_vec();
    let stream =
        |d: Vec<u8>| futures::stream::iter([Ok::<_, std::convert::Infallible>(Bytes::from(d))]);
    let e1 = b
        .upload_part("mpu", "video.ts", &id, 1, stream(p1.clone()), None)
        .await
        .unwrap();
    let e2 = b
        .upload_part("mpu", "video.ts", &id, 2, stream(p2.clone()), None)
        .await
        .unwrap();
    assert_eq!(b.list_parts("mpu", "video.ts", &id).await.unwrap().len(), 2);
    assert_eq!(
        code(
            b.complete_upload("mpu", "video.ts", &id, &[(2, e2.clone()), (1, e1.clone())])
                .await
                .unwrap_err()
        ),
        Code::InvalidPartOrder
    );
    let rec = b
        .complete_upload("mpu", "video.ts", &id, &[(1, e1.clone()), (2, e2.clone())])
        .await
        .unwrap();
    assert_eq!(rec.etag, multipart_etag(&[e1.clone(), e2.clone()]).unwrap());
    assert!(rec.etag.ends_with("-2\""));
    assert_eq!(rec.size, (p1.len() + p2.len()) as u64);
    let bytes = std::fs::read(b.blobs().path(&rec.sha256)).unwrap();
    assert_eq!(&bytes[..p1.len()], &p1[..]);
    assert_eq!(&bytes[p1.len()..], &p2[..]);
    // Completing again answers the same object; the upload itself is gone.
    let again = b
        .complete_upload("mpu", "video.ts", &id, &[(1, e1), (2, e2)])
        .await
        .unwrap();
    assert_eq!(again, rec);
    assert!(b.list_uploads("mpu").await.unwrap().is_empty());
    assert_eq!(
        code(b.abort_upload("mpu", "video.ts", &id).await.unwrap_err()),
        Code::NoSuchUpload
    );
    assert_eq!(
        code(
            b.list_parts("mpu", "video.ts", "../../etc")
                .await
                .unwrap_err()
        ),
        Code::NoSuchUpload
    );
}

fn one_chunk(
    data: Vec<u8>,
) -> impl futures::Stream<Item = std::result::Result<Bytes, std::io::Error>> {
    futures::stream::iter([Ok(Bytes::from(data))])
}

#[tokio::test]
async fn complete_retried_after_a_crash_mid_cleanup_answers_the_object() {
    let (b, store, _dir, _tx) = setup().await;
    b.create_bucket("mpu", Labels::new()).await.unwrap();
    let id = b
        .create_upload("mpu", "k", PutMeta::default())
        .await
        .unwrap();
    let upload = store
        .get(&format!("{UPLOADS_PREFIX}mpu/{id}"))
        .await
        .unwrap()
        .unwrap();
    let e1 = b
        .upload_part(
            "mpu",
            "k",
            &id,
            1,
            one_chunk(vec![1; MIN_PART_SIZE as usize]),
            None,
        )
        .await
        .unwrap();
    let e2 = b
        .upload_part("mpu", "k", &id, 2, one_chunk(vec![2; 10]), None)
        .await
        .unwrap();
    let parts = [(1, e1), (2, e2)];
    let rec = b.complete_upload("mpu", "k", &id, &parts).await.unwrap();
    assert!(rec.etag.ends_with("-2\""));
    // A crash after the commit, with the parts removed but not the upload record.
    store
        .create(&upload.key, upload.value.clone(), Labels::new())
        .await
        .unwrap();
    let again = b.complete_upload("mpu", "k", &id, &parts).await.unwrap();
    assert_eq!(again, rec);
    assert!(
        store.get(&upload.key).await.unwrap().is_none(),
        "cleaned up"
    );
    // And once more, with nothing of the upload left.
    assert_eq!(
        b.complete_upload("mpu", "k", &id, &parts).await.unwrap(),
        rec
    );
    // Another upload of the key is not answered with this object.
    let other = b
        .create_upload("mpu", "k", PutMeta::default())
        .await
        .unwrap();
    assert_eq!(
        code(
            b.complete_upload("mpu", "k", &other, &parts)
                .await
                .unwrap_err()
        ),
        Code::InvalidPart
    );
}
