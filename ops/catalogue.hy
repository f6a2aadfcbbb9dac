"Systems from repositories (the seed's cloud browser, text first): what a list of repositories
offers, and installing one into the workspace's cloud/systems/ so the spec stays the source of
truth. A repository offers a system in hyops-system.toml at its root (docs/services.md)."

(import pathlib [Path]
        repl.catalogue [CatalogueError SYSTEM-FILE installed read-offer system-file-text]
        repl.cloud [CloudError]
        repl.mutate [Plan perform]
        repl.session [current]
        ops.spec [apply-spec!])

(export :objects [catalogue install! uninstall!])


(defn _offer [url]
  (try
    (read-offer url)
    (except [e CatalogueError]
      (raise (CloudError (str e) :code "bad-repository"
                         :hint f"a repository offers one system in {SYSTEM-FILE} at its root")))))

(defn _systems-folder [folder]
  (/ (Path (or folder (/ (. (current) workspace root) "cloud"))) "systems"))

(defn catalogue [urls * [folder None]]
  "What each repository of `urls` offers: name, description, image, whether its image has a
  recipe, and whether it is installed in this workspace. A repository that cannot be read is
  listed with its error, so one bad entry does not hide the others.
    (catalogue [\"git+https://example.org/whoami.git\" \"git+file:///srv/systems/store.git\"])"
  (setv systems (_systems-folder folder) out [])
  (for [url urls]
    (try
      (setv o (read-offer url))
      (.append out {"name" (get o "name") "description" (get o "description")
                    "image" (get o "image") "recipe" (get o "recipe") "url" (get o "url")
                    "installed" (.is-file (/ systems f"{(get o "name")}.toml"))})
      (except [e CatalogueError]
        (.append out {"name" None "url" url "error" (str e)}))))
  out)

(defn install! [url * [folder None] [apply True] [yes False] [dry-run False]]
  "Add the system a repository offers to cloud/systems/NAME.toml (recording the repository and
  commit), then apply the spec (its own plan, y/N, audit line). The image is not built here: it
  must exist on the nodes (a recipe in the repository is noted in the plan).
    (install! \"git+file:///srv/systems/whoami.git\" :yes True)"
  (setv offer (_offer url)
        name (get offer "name")
        path (/ (_systems-folder folder) f"{name}.toml")
        from-repo (installed path)
        notes [f"from {(get offer "url")} at {(cut (get offer "commit") 0 12)}"])
  (when (get offer "recipe")
    (.append notes (+ f"its image has a recipe ({(get offer "recipe")}) that hyops does not build "
                      f"yet: {(get offer "image")} must exist on the nodes")))
  (setv plan (Plan :action "install" :target name
                   :changes [f"cloud/systems/{name}.toml: {(if (.exists path) "replace" "add")} "
                             f"({(get offer "image")})"]
                   :notes notes
                   :refusal (when (and (.exists path) (is from-repo None))
                              #(f"cloud/systems/{name}.toml exists and was written by hand"
                                "rename one of them, or remove the file first"))
                   :args {"url" (get offer "url") "commit" (get offer "commit")}))
  (setv answer (perform plan (fn []
                               (.mkdir (. path parent) :parents True :exist-ok True)
                               (.write-text path (system-file-text offer))
                               (str path))
                        :yes yes :dry-run dry-run))
  (if (and apply (= (get answer "result") "done"))
    (| answer {"applied" (apply-spec! :folder (. path parent parent) :yes yes)})
    answer))

(defn uninstall! [name * [folder None] [apply True] [yes False] [dry-run False]]
  "Take an installed system out of cloud/systems/ and apply the spec: its service is removed
  (named volumes stay). Only a file install! wrote is removed.
    (uninstall! \"whoami\" :yes True)"
  (setv path (/ (_systems-folder folder) f"{name}.toml")
        from-repo (installed path))
  (setv plan (Plan :action "uninstall" :target name
                   :changes [f"cloud/systems/{name}.toml: REMOVE"]
                   :notes (if from-repo [f"installed from {from-repo}"] [])
                   :refusal (cond (not (.exists path))
                                    #(f"no system {name} in {(. path parent)}" "(catalogue ...) lists what is installed")
                                  (is from-repo None)
                                    #(f"cloud/systems/{name}.toml was written by hand, not installed"
                                      "remove the file yourself if that is meant"))))
  (setv answer (perform plan (fn [] (.unlink path) (str path)) :yes yes :dry-run dry-run))
  (if (and apply (= (get answer "result") "done"))
    (| answer {"applied" (apply-spec! :folder (. path parent parent) :yes yes)})
    answer))
