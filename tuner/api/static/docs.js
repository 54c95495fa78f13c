// Starts Swagger UI on /docs from a file of this server: the Content-Security-Policy forbids the
// inline script FastAPI's own page uses, and the bundle comes from fastapi-offline, not a CDN.
window.addEventListener("load", function () {
  var root = document.getElementById("swagger-ui");
  window.ui = SwaggerUIBundle({
    url: root.dataset.openapi,
    dom_id: "#swagger-ui",
    deepLinking: true,
    presets: [SwaggerUIBundle.presets.apis, SwaggerUIBundle.SwaggerUIStandalonePreset],
    layout: "BaseLayout",
  });
});
