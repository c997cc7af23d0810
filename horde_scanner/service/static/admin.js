// Review page helpers, no framework. Previews load only when an admin clicks "reveal" on one
// item; the server sends them blurred, greyscale and small whatever happens here.
"use strict";
document.addEventListener("click", function (event) {
  var link = event.target.closest("a.reveal");
  if (!link) return;
  event.preventDefault();
  var img = document.createElement("img");
  img.className = "preview-img";
  img.alt = "blurred greyscale preview";
  img.src = link.getAttribute("href");
  link.replaceWith(img);
});
document.addEventListener("submit", function (event) {
  // The button pressed may ask its own question (a dry run asks nothing, "Do it" does).
  var question =
    (event.submitter && event.submitter.getAttribute("data-ask")) ||
    event.target.getAttribute("data-ask");
  if (question && !window.confirm(question)) event.preventDefault();
});
