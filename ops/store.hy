"The cloud's store (etcd, a system of the cloud: docs/store.md), through the node API.

  (store)                         members (node, healthy, leader), the leader and the health
  (kv \"app/mode\")                 one value (None when the key is not there)
  (kv-ls \"app/\")                  the keys and values under a prefix, in key order
  (kv-put! \"app/mode\" \"blue\")     write one key (plan, y/N, :dry-run, audit log as every change)
  (kv-put-many! {\"a\" \"1\" ...})    write many keys, in transactions of at most 128
  (store-backup! \"backups/s.json\")  the store's snapshot and every key, into a file here
  (store-restore! \"backups/s.json\") every key of a backup, into this cloud's empty store

Values are strings (JSON text for structured data); plans and the audit log show keys and
sizes, never values."

(import json
        hashlib
        base64
        pathlib [Path]
        datetime [datetime UTC]
        repl.cloud [call CloudError]
        repl.mutate [Plan perform]
        repl.session [current]
        wire.files [write-private]
        wire.store [MAX-BATCH StoreInputError check-batch check-key check-value])

(export :objects [store kv kv-ls kv-put! kv-put-many! store-backup! store-restore!])

(setv BACKUP-FORMAT "hyops-store-backup-1")


(defn _bad [exc]
  (CloudError (str exc) :code "bad-input" :hint "nothing was written"))

(defn store []
  "The store: `health` (healthy, degraded, no-quorum, stopping, stopped, none), `leader`, and its
  `members`, each with its node, whether it runs, is healthy and leads.
    (store)
    (get (store) \"leader\")"
  (call "GET" "/v1/store"))

(defn kv [key]
  "The value of `key` in the store, or None when there is no such key.
    (kv \"app/mode\")"
  (try (check-key key) (except [e StoreInputError] (raise (_bad e))))
  (setv kvs (get (call "GET" "/v1/store/kv" :params {"key" key}) "kvs"))
  (if kvs (get (get kvs 0) "value") None))

(defn kv-ls [[prefix ""] * [limit 1000]]
  "The keys under `prefix` with their values, in key order, as {key value} (at most `limit`).
    (kv-ls \"app/\")
    (len (kv-ls \"bench/\" :limit 10000))"
  (setv answer (call "GET" "/v1/store/kv" :params {"key" prefix "prefix" True "limit" limit}))
  (dfor item (get answer "kvs") (get item "key") (get item "value")))

(defn _pairs [mapping]
  "[[key value] ...] of a dict, checked whole before anything is sent."
  (setv pairs (list (.items mapping)))
  (try
    (for [[k v] pairs] (check-key k) (check-value k v))
    (except [e StoreInputError] (raise (_bad e))))
  (lfor [k v] pairs [k v]))

(defn _chunks [pairs]
  (lfor i (range 0 (len pairs) MAX-BATCH) (cut pairs i (+ i MAX-BATCH))))

(defn _write [pairs]
  "Write `pairs` in transactions of at most MAX-BATCH; each is all or nothing."
  (setv chunks (_chunks pairs))
  (try (for [chunk chunks] (check-batch chunk)) (except [e StoreInputError] (raise (_bad e))))
  (setv written 0)
  (for [chunk chunks]
    (+= written (get (call "PUT" "/v1/store/kv" :body {"kvs" chunk}) "written")))
  {"written" written "transactions" (len chunks)})

(defn kv-put! [key value * [yes False] [dry-run False]]
  "Write `value` (a string) at `key`: one transaction, all or nothing.

  Refused before anything is sent: a key over 1024 bytes, a value over 512 KiB, a value that
  is not a string. A store without quorum refuses it too (nothing written). Plan, y/N, :yes,
  :dry-run and the audit log as for every change (sizes shown, never the value).
    (kv-put! \"app/mode\" \"blue\" :yes True)"
  (setv [[key value]] (_pairs {key value})
        size (len (.encode value))
        plan (Plan :action "kv-put"
                   :target key
                   :changes [f"{key}: set to a value of {size} bytes"]
                   :args {"key" key "bytes" size}))
  (perform plan (fn [] (_write [[key value]])) :yes yes :dry-run dry-run))

(defn kv-put-many! [mapping * [yes False] [dry-run False]]
  "Write every key and value of `mapping` (a dict of strings), in transactions of at most 128
  keys each (every transaction all or nothing). Every key and value is checked before the first
  is sent: bad input writes nothing.
    (kv-put-many! (dfor i (range 1000) f\"bench/{i}\" (str i)) :yes True)"
  (setv pairs (_pairs mapping)
        keys (lfor [k _] pairs k)
        size (sum (gfor [k v] pairs (+ (len (.encode k)) (len (.encode v)))))
        plan (Plan :action "kv-put-many"
                   :target (if keys (get keys 0) "nothing")
                   :changes (if pairs
                              [(+ f"{(len pairs)} keys, {size} bytes, in "
                                  f"{(len (_chunks pairs))} transactions"
                                  f" (first {(get keys 0)}, last {(get keys -1)})")]
                              [])
                   :args {"keys" (len pairs) "bytes" size}))
  (perform plan (fn [] (_write pairs)) :yes yes :dry-run dry-run))

(defn store-backup! [path]
  "Write the store's backup into the file `path` (in the workspace, or anywhere outside the
  cloud): etcd's snapshot (what `etcdctl snapshot restore` takes, checked by its sha256) and
  every key and value at that revision. An existing file is never overwritten.
    (store-backup! \"backups/store.json\")"
  (setv path (Path path))
  (when (.exists path)
    (raise (CloudError f"{path} exists already: a backup never overwrites one"
                       :code "exists" :hint "choose a new path, or move the old file away")))
  (setv answer (call "GET" "/v1/store/snapshot")
        data (base64.b64decode (get answer "snapshot")))
  (when (!= (.hexdigest (hashlib.sha256 data)) (get answer "sha256"))
    (raise (CloudError "the snapshot arrived damaged (its sha256 differs); nothing was written"
                       :code "damaged" :hint "take the backup again")))
  (setv conn (. (current) cloud-connection)
        doc {"format" BACKUP-FORMAT
             "cloud" (when conn conn.record.name)
             "cloud_id" (when conn conn.cloud-id)
             "time" (.strftime (datetime.now UTC) "%Y-%m-%dT%H:%M:%SZ")
             "revision" (get answer "revision")
             "sha256" (get answer "sha256")
             "bytes" (get answer "bytes")
             "snapshot" (get answer "snapshot")
             "kvs" (get answer "kvs")})
  (.mkdir path.parent :parents True :exist-ok True)
  (write-private path (.encode (json.dumps doc)))
  {"path" (str path) "keys" (len (get answer "kvs")) "revision" (get answer "revision")
   "snapshot_bytes" (get answer "bytes") "sha256" (get answer "sha256")})

(defn _read-backup [path]
  (try
    (setv doc (json.loads (.read-text (Path path))))
    (except [e [OSError ValueError]]
      (raise (CloudError f"cannot read the backup {path}: {e}" :code "bad-backup"
                         :hint "give the path (store-backup!) wrote"))))
  (when (or (not (isinstance doc dict)) (!= (.get doc "format") BACKUP-FORMAT))
    (raise (CloudError f"{path} is not a store backup ({BACKUP-FORMAT})" :code "bad-backup"
                       :hint "give the path (store-backup!) wrote")))
  (setv data (base64.b64decode (get doc "snapshot")))
  (when (!= (.hexdigest (hashlib.sha256 data)) (get doc "sha256"))
    (raise (CloudError f"{path} is damaged: its snapshot's sha256 differs" :code "bad-backup"
                       :hint "restore another backup")))
  doc)

(defn store-restore! [path * [yes False] [dry-run False]]
  "Bring every key and value of the backup `path` into this cloud's store, which must be empty
  (a new cloud). Checked first (format, the snapshot's sha256, every key and value); written in
  transactions of at most 128 keys. Plan, y/N, :yes, :dry-run and the audit log as for every
  change.
    (store-restore! \"backups/store.json\" :yes True)"
  (setv doc (_read-backup path)
        pairs (_pairs (dict (get doc "kvs")))
        there (kv-ls "" :limit 1)
        plan (Plan :action "store-restore"
                   :target (str path)
                   :changes [(+ f"{(len pairs)} keys from the backup of {(.get doc "cloud")} "
                                f"at revision {(get doc "revision")} ({(get doc "time")})")]
                   :args {"keys" (len pairs) "sha256" (get doc "sha256")}
                   :refusal (when there
                              #("this cloud's store is not empty: a restore goes into a new one"
                                "restore into a new cloud (hyops up), or remove the keys first"))))
  (perform plan (fn [] (_write pairs)) :yes yes :dry-run dry-run))
