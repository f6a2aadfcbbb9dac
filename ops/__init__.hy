"The operator's vocabulary. The public names of this package and of every ops/*.hy module
(functions, classes and macros defined there, or what `export` lists) become the console's
namespace; see docs/console.md."
