// Sortable tables (click a header) and, for long ones, a filter box above them. Reads only
// the page's own escaped text; loads and sends nothing.
document.querySelectorAll("table.filterable").forEach(function (table) {
  var body = table.tBodies[0];
  var box = document.createElement("input");
  box.type = "search";
  box.placeholder = "filter " + body.rows.length + " rows";
  box.className = "filter";
  table.parentNode.insertBefore(box, table);
  box.addEventListener("input", function () {
    var needle = box.value.toLowerCase();
    Array.prototype.forEach.call(body.rows, function (row) {
      row.style.display = row.textContent.toLowerCase().indexOf(needle) >= 0 ? "" : "none";
    });
  });
});
document.querySelectorAll("table.sortable").forEach(function (table) {
  var body = table.tBodies[0];
  Array.prototype.forEach.call(table.tHead.rows[0].cells, function (th, column) {
    th.style.cursor = "pointer";
    th.title = "sort";
    th.addEventListener("click", function () {
      var up = th.getAttribute("aria-sort") !== "ascending";
      Array.prototype.forEach.call(table.tHead.rows[0].cells, function (other) {
        other.removeAttribute("aria-sort");
      });
      th.setAttribute("aria-sort", up ? "ascending" : "descending");
      var rows = Array.prototype.slice.call(body.rows);
      var key = function (row) {
        var text = row.cells[column] ? row.cells[column].textContent.trim() : "";
        var number = parseFloat(text);
        return isNaN(number) || !/^[-+]?[0-9.]/.test(text) ? [1, text.toLowerCase()] : [0, number];
      };
      rows.sort(function (a, b) {
        var x = key(a), y = key(b);
        var order = x[0] - y[0] || (x[1] < y[1] ? -1 : x[1] > y[1] ? 1 : 0);
        return up ? order : -order;
      });
      rows.forEach(function (row) { body.appendChild(row); });
    });
  });
});
