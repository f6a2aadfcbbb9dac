"The cloud's status page in the operator's browser; docs/status-page.md tells the story and
repl/ui.py does the plumbing (a session from the operator's key, a loopback forward)."

(import repl.ui [open-page revoke-pages])

(export :objects [ui])


(defn ui [* [print-url False] [ttl 3600] [revoke False]]
  "Open the cloud's live status page in the browser ($BROWSER is respected).

  (ui)                     a session of an hour, made from the operator's key, opened in the browser
  (ui :print-url True)     the URL to open yourself instead (it holds a one-time ticket: a secret)
  (ui :ttl 600)            a session of ten minutes
  (ui :revoke True)        end every page session on every node

  The page is served through a forward on 127.0.0.1 that lives as long as this workspace session;
  it checks the node's certificate against the cloud's CA, so the browser trusts nothing new."
  (if revoke
    (revoke-pages)
    (open-page :print-url print-url :ttl ttl)))
