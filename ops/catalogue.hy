"Systems from repositories (the seed's cloud browser, text first): what a list of repositories
offers, and installing one into the workspace's cloud/systems/ so the spec stays the source of
truth, its image built with the image tool and carried to the nodes (no registry). A repository
offers a system in hyops-system.toml at its root, its image's recipe in hyops-image.toml
(docs/services.md). (push-image! ...) carries any image tar or recipe's image to the nodes."

(import pathlib [Path]
        images.build [ImageError build-image image-tag]
        repl.catalogue [CatalogueError SYSTEM-FILE checkout installed offer-in read-offer
                        system-file-text]
        repl.cloud [CloudError]
        repl.imagepush [TarImage carry-everywhere image-in-tar recipe-or-tar]
        repl.mutate [Plan perform]
        repl.session [current]
        ops.spec [apply-spec!])

(export :objects [catalogue install! uninstall! push-image!])


(defn _bad-repository [e]
  (CloudError (str e) :code "bad-repository"
              :hint f"a repository offers one system in {SYSTEM-FILE} at its root"))

(defn _offer [url]
  (try
    (read-offer url)
    (except [e CatalogueError]
      (raise (_bad-repository e)))))

(defn _image-error [e]
  (CloudError (str e) :code "bad-image"
              :hint "fix the recipe (docs/node-image.md says its format), then try again"))

(defn _say [line]
  (print f"  {line}" :flush True))

(defn _build [recipe-name #** kw]
  "The image of a recipe, built or taken from the cache, as a TarImage."
  (try
    (setv built (build-image recipe-name :log _say #** kw))
    (except [e ImageError]
      (raise (_image-error e))))
  (_say (+ f"{built.tag}: " (if built.cached "cached" f"built in {built.seconds} s")))
  #(built (TarImage built.tar built.image-id [built.tag])))

(defn _tag [recipe-name #** kw]
  (try
    (image-tag recipe-name #** kw)
    (except [e ImageError]
      (raise (_image-error e)))))

(defn push-image! [what * [yes False] [dry-run False]]
  "Carry an image to every ready node of the cloud, through each node's agent (no registry):
  `what` is a `docker load` tar (what `hyops image build` or `docker save` wrote), the tag of an
  image in the image cache (what install! built: carried again to a node that joined since), or
  the name of a recipe in images/recipes/ (built first, or taken from the cache). Nodes that have the image
  are skipped; each node checks the tar is that one image before loading it. A node that joins
  later gets it when this is run again.
    (push-image! \"busybox\" :yes True)
    (push-image! \"out/hyops-busybox-686b9a646e56.tar\")
    (push-image! \"test/whoami:a66de1bd5d02\")"
  (setv [kind path] (recipe-or-tar what))
  (if (= kind "tar")
      (setv image (image-in-tar path)
            shown (if image.tags (get image.tags 0) (cut image.image-id 0 19))
            changes [f"image {shown} ({(cut image.image-id 0 19)}): carry to the nodes that lack it"])
      (setv [tag cached] (_tag what)
            shown tag
            changes [(+ f"image {tag}: " (if cached "built before (cached)"
                                             f"build from images/recipes/{what}.toml"))
                     f"image {tag}: carry to the nodes that lack it"]))
  (setv plan (Plan :action "push-image" :target shown :changes changes
                   :args {"what" (str what)}))
  (perform plan (fn []
                  (setv carried (if (= kind "tar") image (get (_build what) 1)))
                  {"image" shown "id" carried.image-id
                   "nodes" (carry-everywhere (current) carried)})
           :yes yes :dry-run dry-run))

(defn _systems-folder [folder]
  (/ (Path (or folder (/ (. (current) workspace root) "cloud"))) "systems"))

(defn catalogue [urls * [folder None]]
  "What each repository of `urls` offers: name, description, image, its image's recipe (a path
  in the repository, or None), and whether it is installed in this workspace. A repository that cannot be read is
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
  commit), then apply the spec (its own plan, y/N, audit line). A repository with an image
  recipe (hyops-image.toml) has its image built with the image tool (cached by content: a second
  install builds nothing) and carried to every ready node; the system file names the image by
  its content tag.
    (install! \"git+file:///srv/systems/whoami.git\" :yes True)"
  (try
    (with [fetched (checkout url)]
      (_install fetched url folder apply yes dry-run))
    (except [e CatalogueError]
      (raise (_bad-repository e)))))

(defn _install [fetched url folder apply yes dry-run]
  "install!, with the repository checked out (kept while its image is built)."
  (setv [where commit] fetched
        offer (offer-in where url commit))
  (setv name (get offer "name")
        path (/ (_systems-folder folder) f"{name}.toml")
        from-repo (installed path)
        recipe (get offer "recipe")
        image (get offer "image")
        changes []
        notes [f"from {(get offer "url")} at {(cut (get offer "commit") 0 12)}"])
  (when recipe
    (setv where-recipe {"recipes" (/ where (. (Path recipe) parent)) "repo" where}
          recipe-name (. (Path recipe) stem)
          [image cached] (_tag recipe-name #** where-recipe))
    (.extend changes [(+ f"image {image}: " (if cached "built before (cached)"
                                                 f"build from {recipe} (the image tool)"))
                      f"image {image}: carry to the nodes that lack it"]))
  (.append changes f"cloud/systems/{name}.toml: {(if (.exists path) "replace" "add")} ({image})")
  (setv plan (Plan :action "install" :target name
                   :changes changes
                   :notes notes
                   :refusal (when (and (.exists path) (is from-repo None))
                              #(f"cloud/systems/{name}.toml exists and was written by hand"
                                "rename one of them, or remove the file first"))
                   :args {"url" (get offer "url") "commit" (get offer "commit")}))
  (defn act []
    (setv out {"file" (str path)})
    (when recipe
      (setv [built tar-image] (_build recipe-name #** where-recipe))
      (setv (get offer "system" "image") built.tag
            (get out "image") built.tag
            (get out "built") (not built.cached)
            (get out "nodes") (carry-everywhere (current) tar-image)))
    (.mkdir (. path parent) :parents True :exist-ok True)
    (.write-text path (system-file-text offer))
    out)
  (setv answer (perform plan act :yes yes :dry-run dry-run))
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
